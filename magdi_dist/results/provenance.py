"""Where a study's cells came from, read from its MLflow store: which cells finished, the commit each
ran on (the ``mlflow.source.git.commit`` and ``magdi.git_dirty`` tags every run gets,
``track.runs``), the study config its parent run recorded; and the machine collect runs on.

Collect reads the study's own run folder, so it runs where the study ran: the machine recorded with a
cell is the one that trained it unless the folder was moved to another machine first.
"""

from __future__ import annotations

import datetime as dt
import json
import os
import platform
import tempfile
from pathlib import Path
from typing import Any

from magdi_dist.results.files import ResultsError

# MLflow's own tag names (mlflow.utils.mlflow_tags), spelled out: importing MLflow costs seconds, and a
# refused collection should say so before paying them.
MLFLOW_GIT_COMMIT = "mlflow.source.git.commit"
MLFLOW_PARENT_RUN_ID = "mlflow.parentRunId"
KEPT_TAGS = (MLFLOW_GIT_COMMIT, MLFLOW_PARENT_RUN_ID)  # with every magdi.* tag
TAG_GIT_DIRTY = "magdi.git_dirty"  # track.runs
PROGRESS_BAR = "MLFLOW_ENABLE_ARTIFACTS_PROGRESS_BAR"


def tracking_uri(src: Path, given: str | None) -> str:
    """The study's store: ``given``, else the embedded sqlite store of the run folder."""
    if given:
        return given
    from magdi_dist.track.store import embedded_paths

    db, _ = embedded_paths(src)
    if not db.is_file():  # MLflow would create an empty store here: say what is missing instead
        raise ResultsError(f"{src}: no MLflow store at {db}; the cells' commits are read from their runs "
                           "(name the study's store with --tracking-uri)")
    return f"sqlite:///{db}"


def _iso(ms: int | None) -> str | None:
    return None if ms is None else dt.datetime.fromtimestamp(ms / 1000, dt.UTC).isoformat(timespec="seconds")


def now() -> str:
    return dt.datetime.now(dt.UTC).isoformat(timespec="seconds")


def cell_runs(uri: str, study: str | None) -> tuple[str, dict[str, Any]]:
    """(study name, cell -> its latest run) of the store; ``study`` None: the store's only study."""
    from magdi_dist.track.runs import TAG_CELL, TAG_ROLE, TAG_STUDY
    from magdi_dist.track.store import client_for

    client = client_for(uri)
    experiments = [e.experiment_id for e in client.search_experiments()]
    runs = client.search_runs(experiments, filter_string=f"tags.`{TAG_ROLE}` = 'cell'",
                              order_by=["attributes.start_time DESC"], max_results=50_000) if experiments else []
    studies = sorted({r.data.tags.get(TAG_STUDY) for r in runs} - {None})
    if study is None:
        if len(studies) != 1:
            raise ResultsError(f"{uri}: the store holds the studies {studies or 'none'}; name one with --study")
        study = studies[0]
    elif study not in studies:
        raise ResultsError(f"{uri}: no cell runs of study {study!r} (the store has {studies or 'none'})")
    latest: dict[str, Any] = {}
    for run in runs:  # newest first: a cell's first hit is its latest run, finished or not
        if run.data.tags.get(TAG_STUDY) == study:
            latest.setdefault(run.data.tags.get(TAG_CELL), run)
    latest.pop(None, None)
    return study, latest


def run_record(run) -> dict[str, Any]:
    """A cell's run as kept in ``cells/<cell>/mlflow.json``: id, status, times, tags, final metrics."""
    tags = {k: v for k, v in sorted(run.data.tags.items()) if k.startswith("magdi.") or k in KEPT_TAGS}
    return {"run_id": run.info.run_id, "status": run.info.status, "started": _iso(run.info.start_time),
            "ended": _iso(run.info.end_time), "tags": tags, "metrics": dict(sorted(run.data.metrics.items()))}


def commit_of(record: dict[str, Any]) -> dict[str, Any]:
    """The commit a cell ran on and whether the checkout had uncommitted changes (None: untracked)."""
    tags = record["tags"]
    dirty = tags.get(TAG_GIT_DIRTY)
    return {"commit": tags.get(MLFLOW_GIT_COMMIT), "dirty": None if dirty is None else dirty == "true"}


def study_config(uri: str, parent_run_id: str | None) -> dict[str, Any] | None:
    """The study config its parent run logged (``config.json``), or None when it has none."""
    if not parent_run_id:
        return None
    from magdi_dist.track.runs import CONFIG_ARTIFACT
    from magdi_dist.track.store import client_for

    client = client_for(uri)
    bar = os.environ.get(PROGRESS_BAR)
    os.environ[PROGRESS_BAR] = "false"  # MLflow draws a download bar per artifact on stderr otherwise
    try:
        with tempfile.TemporaryDirectory(prefix="magdi-results-") as tmp:
            path = client.download_artifacts(parent_run_id, CONFIG_ARTIFACT, tmp)
            return json.loads(Path(path).read_text())
    except Exception:  # noqa: BLE001 -- a parent without the artifact (or its files gone) has no config
        return None
    finally:
        if bar is None:
            os.environ.pop(PROGRESS_BAR, None)
        else:
            os.environ[PROGRESS_BAR] = bar


def machine() -> dict[str, Any]:
    """This machine, as a results table names it: CPU model, logical cores, architecture, OS."""
    cpu = None
    cpuinfo = Path("/proc/cpuinfo")
    if cpuinfo.is_file():
        cpu = next((line.split(":", 1)[1].strip() for line in cpuinfo.read_text().splitlines()
                    if line.startswith("model name")), None)
    return {"cpu": cpu or platform.processor() or platform.machine(), "cores": os.cpu_count(),
            "arch": platform.machine(), "system": platform.system()}
