"""Attach an evaluation to an existing MLflow run (the training run, or any run the caller names)."""

from __future__ import annotations

import math
import os
from pathlib import Path

METRIC_KEYS = (
    "accuracy",
    "ci95_low",
    "ci95_high",
    "extraction_failure_rate",
    "no_answer_rate",
    "tokens_per_question",
    "tokens_per_sample",
    "latency_s_per_question",
    "n",
    "contamination_excluded",  # the data's questions the student was trained on, dropped
    "contaminated",  # ... evaluated anyway (allow_contaminated)
)
EFFICIENCY_KEYS = ("teacher_tokens_per_question", "teacher_to_student_ratio", "matched")


def metrics_of(summary: dict, prefix: str) -> dict[str, float]:
    """The numeric summary entries as MLflow metrics (``<prefix>accuracy`` ...); None values are skipped."""
    out = {f"{prefix}{k}": float(summary[k]) for k in METRIC_KEYS if summary.get(k) is not None}
    eff = summary.get("efficiency") or {}
    out.update({f"{prefix}{k}": float(eff[k]) for k in EFFICIENCY_KEYS if eff.get(k) is not None})
    return {k: v for k, v in out.items() if math.isfinite(v)}


def log_to_run(
    run_id: str,
    summary: dict,
    files: list[Path],
    *,
    tracking_uri: str | None = None,
    prefix: str = "eval/",
    artifact_path: str = "eval",
) -> None:
    """Log the summary metrics and the given files (predictions, summary) to run ``run_id``.

    The tracking URI is the explicit one, else ``MLFLOW_TRACKING_URI`` (MlflowClient's own default).
    """
    from mlflow.tracking import MlflowClient

    client = MlflowClient(tracking_uri=tracking_uri or os.environ.get("MLFLOW_TRACKING_URI"))
    client.get_run(run_id)  # fail before logging anything when the run does not exist
    for key, value in metrics_of(summary, prefix).items():
        client.log_metric(run_id, key, value)
    for f in files:
        client.log_artifact(run_id, str(f), artifact_path)
