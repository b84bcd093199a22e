"""Scaling-study summary on the parent run: the curve plot and the power-law fit as artifacts.

The fitting and plotting live in :mod:`magdi_dist.study.curve` (no MLflow there); this module only
files the results, so the study code can also produce them without a tracking store.
"""

from __future__ import annotations

import json
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
    tracking_uri: str,
    rank: int,
    offset: bool = False,
    title: str | None = None,
    keep_dir: str | Path | None = None,
) -> dict[str, Any] | None:
    """Fit, plot and log ``scaling_curve.png``, ``scaling_fit.json`` and ``scaling_rows.json``.

    Returns the fit summary (also on failure-to-fit: it then carries messages, see ``fit_scaling``);
    None on ranks other than 0. ``keep_dir`` keeps the files there too (a study's output folder), so
    a user can open the plot without going through the tracking server.
    """
    if rank != 0 or parent_run_id is None:
        return None
    # Imported here: study code imports track, so a module-level import back would be a cycle.
    from magdi_dist.study.curve import fit_scaling, plot_scaling

    # Rows may carry numpy scalars (np.int64 is not JSON-serialisable); make them plain first.
    rows = json.loads(json.dumps([dict(r) for r in rows], default=_plain))
    fits = fit_scaling(rows, offset=offset)
    client = client_for(tracking_uri)
    with tempfile.TemporaryDirectory(prefix="magdi-summary-") as tmp:
        folder = Path(keep_dir) if keep_dir is not None else Path(tmp)
        folder.mkdir(parents=True, exist_ok=True)
        png = plot_scaling(rows, folder / PLOT_ARTIFACT, fits=fits, title=title or "scaling study")
        client.log_artifact(parent_run_id, str(png))
        if keep_dir is not None:
            (folder / FIT_ARTIFACT).write_text(json.dumps(fits, indent=2, default=_plain))
    client.log_dict(parent_run_id, fits, FIT_ARTIFACT)
    client.log_dict(parent_run_id, {"rows": rows}, ROWS_ARTIFACT)
    return fits
