"""MLflow tracking for magdi-dist: stores, run layout, per-step metrics, model registry, study summary.

Only rank 0 writes; every writing call takes ``rank`` explicitly. Nothing here imports the model or
the training loop: ``track`` is called from the top (study / CLI), and the loop only sees a
``MetricsLogger`` through its ``metrics_callback``. ``registry`` (torch/transformers at predict time)
is not imported here; use ``from magdi_dist.track.registry import log_student, set_champion``.
"""

from magdi_dist.track.metrics import MetricsLogger
from magdi_dist.track.runs import (
    cell_run,
    find_cell_run,
    finish_run,
    git_sha,
    log_cell_result,
    resolved_config_digest,
    start_cell_run,
    start_study_run,
)
from magdi_dist.track.store import ensure_experiment, resolve_tracking_uri, use_tracking
from magdi_dist.track.summary import log_study_summary

__all__ = [
    "MetricsLogger",
    "cell_run",
    "resolved_config_digest",
    "ensure_experiment",
    "find_cell_run",
    "finish_run",
    "git_sha",
    "log_cell_result",
    "log_study_summary",
    "resolve_tracking_uri",
    "start_cell_run",
    "start_study_run",
    "use_tracking",
]
