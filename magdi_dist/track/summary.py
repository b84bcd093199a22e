"""Scaling-study summary on the parent run: the curve plot and the power-law fit as artifacts.

The fitting and plotting live in :mod:`magdi_dist.study.curve` (no MLflow there), and the study
runner computes them and writes them into its output folder; this module only files the results it
is handed. ``track`` sits below ``study`` and never imports it.
"""

from __future__ import annotations

import json
import shutil
import tempfile
from collections.abc import Iterable, Mapping
from pathlib import Path
from typing import Any

from magdi_dist.track.store import client_for

PLOT_ARTIFACT = "scaling_curve.png"
FIT_ARTIFACT = "scaling_fit.json"
ROWS_ARTIFACT = "scaling_rows.json"


def _plain(value: Any) -> Any:
    return value.item() if hasattr(value, "item") else str(value)


def log_study_summary(
    parent_run_id: str | None,
    rows: Iterable[Mapping[str, Any]],
    *,
    fits: Mapping[str, Any],
    plot: str | Path,
    tracking_uri: str,
    rank: int,
) -> None:
    """Log ``scaling_curve.png``, ``scaling_fit.json`` and ``scaling_rows.json`` on the parent run.

    ``fits`` is the already computed fit summary (``study.curve.fit_scaling``), ``plot`` the already
    written PNG (``study.curve.plot_scaling``; logged as ``scaling_curve.png`` whatever its file
    name), ``rows`` the study rows they were computed from. A no-op on ranks other than 0.
    """
    if rank != 0 or parent_run_id is None:
        return
    # Rows and fits may carry numpy scalars (np.int64 is not JSON-serialisable); make them plain first.
    rows = json.loads(json.dumps([dict(r) for r in rows], default=_plain))
    fits = json.loads(json.dumps(dict(fits), default=_plain))
    client = client_for(tracking_uri)
    plot = Path(plot)
    if plot.name == PLOT_ARTIFACT:
        client.log_artifact(parent_run_id, str(plot))
    else:  # the artifact name is the file name: log a copy under the fixed one
        with tempfile.TemporaryDirectory(prefix="magdi-summary-") as tmp:
            client.log_artifact(parent_run_id, str(shutil.copyfile(plot, Path(tmp) / PLOT_ARTIFACT)))
    client.log_dict(parent_run_id, fits, FIT_ARTIFACT)
    client.log_dict(parent_run_id, {"rows": rows}, ROWS_ARTIFACT)
