"""Register exported students as MLflow pyfunc models and keep a ``champion`` alias on the best one.

What gets logged is the *exported* HF directory only (config, tokenizer, safetensors weights, the
graph encoder). Files are copied through an allowlist, so a DeepSpeed ZeRO checkpoint that happens
to sit in the same folder (``global_step*/``, ``*.pt``, ``latest``, ``zero_to_fp32.py``) can never be
uploaded; the checkpoint location is recorded as a tag instead. An export in object storage (a stored
run's ``s3://.../export``) is fetched into a temporary folder first and logged like a local one; where
the artifacts go is the tracking store's business (an ``s3://`` artifact root: the same bucket, with
``MLFLOW_S3_ENDPOINT_URL`` for a non-AWS endpoint).

The model is logged from code (MLflow "models from code"): ``python_model`` is the path of
``student_code.py``, which MLflow copies into the model and runs at load time, instead of a pickled
object. The ``magdi_dist`` package goes along as ``code_paths``, so that file's import of
``StudentModel`` and the training prompt format work in a serving environment that only has the
pinned requirements. The signature comes from ``StudentModel.predict``'s type hints plus the input
example (one question and the ``max_new_tokens`` param), which MLflow runs once at logging time.
"""

from __future__ import annotations

import contextlib
import logging
import math
import os
import shutil
import tempfile
from collections.abc import Mapping
from importlib import metadata
from pathlib import Path

import mlflow
from mlflow.entities.model_registry import ModelVersion

from magdi_dist.storage import is_uri
from magdi_dist.track.pyfunc_student import ARTIFACT_KEY, DEFAULT_MAX_NEW_TOKENS
from magdi_dist.track.store import client_for, use_tracking

log = logging.getLogger(__name__)

CHAMPION = "champion"
MODEL_ARTIFACT_NAME = "student"
# Suffixes an exported HF student directory consists of; everything else is left behind.
EXPORT_SUFFIXES = (".json", ".safetensors", ".txt", ".model", ".jinja")
RUNTIME_PACKAGES = ("torch", "transformers", "safetensors", "tokenizers")
MODEL_CODE = Path(__file__).with_name("student_code.py")
# The logged input example's question; MLflow answers it once while logging (a smoke test of the
# logged model) and ships it as the served model's example request.
EXAMPLE_QUESTION = "Ava has 3 pens. Ava gets 4 more. How many pens does Ava have now?"

TAG_STUDY = "study"
TAG_CELL = "cell"
TAG_DATA_HASH = "data_hash"
TAG_CHECKPOINT = "checkpoint"
TAG_METRIC_NAME = "metric_name"
TAG_METRIC_VALUE = "metric_value"
METRIC_TAG_PREFIX = "metric."


def pinned_requirements() -> list[str]:
    """``pkg==version`` for the runtime the student needs, from what is installed now.

    Local version labels (``2.13.0+cpu``) are dropped: the same model must install on a GPU box.
    """
    return [f"{name}=={metadata.version(name).split('+')[0]}" for name in RUNTIME_PACKAGES]


def stage_export(export_dir: str | os.PathLike, dest: str | os.PathLike) -> list[str]:
    """Copy (hard-link when possible) the allowlisted files of an export into ``dest``; names copied."""
    src, dst = Path(export_dir), Path(dest)
    if not (src / "config.json").is_file():
        raise FileNotFoundError(f"{src} is not an exported student: no config.json")
    if not any(p.name.startswith("model") and p.suffix == ".safetensors" for p in src.iterdir()):
        raise FileNotFoundError(f"{src} has no model*.safetensors weights")
    dst.mkdir(parents=True, exist_ok=True)
    kept, skipped = [], []
    for path in sorted(src.iterdir()):
        if path.is_file() and path.suffix in EXPORT_SUFFIXES:
            try:
                os.link(path, dst / path.name)  # no second copy of multi-GB weights when on one disk
            except OSError:
                shutil.copy2(path, dst / path.name)
            kept.append(path.name)
        else:
            skipped.append(path.name)
    if skipped:
        log.info("not logging non-export entries of %s: %s", src, skipped)
    return kept


def _fetched(export_dir: str | os.PathLike, into: Path) -> Path:
    """A local folder holding the export: itself, or (a URI) its files downloaded into ``into``."""
    if not is_uri(export_dir):
        return Path(export_dir)
    from magdi_dist.storage import pull_tree

    if not pull_tree(str(export_dir), into):
        raise FileNotFoundError(f"{export_dir}: no exported student there (no files)")
    return into


def input_example(max_new_tokens: int) -> tuple[list[str], dict[str, int]]:
    """The logged ``(input, params)`` example. MLflow builds the signature from ``predict``'s type
    hints (a string column in and out) and the params schema from this example: ``max_new_tokens``,
    a long defaulting to the study's value, is what lets ``predict(..., params=...)`` reach the model."""
    return [EXAMPLE_QUESTION], {"max_new_tokens": int(max_new_tokens)}


def log_student(
    export_dir: str | os.PathLike,
    *,
    tracking_uri: str,
    run_id: str,
    model_name: str,
    study: str,
    cell: str,
    rank: int,
    data_hash: str | None = None,
    metrics: Mapping[str, float] | None = None,
    primary_metric: str | None = None,
    checkpoint_dir: str | None = None,
    max_new_tokens: int = DEFAULT_MAX_NEW_TOKENS,
    registry_uri: str | None = None,
) -> ModelVersion | None:
    """Log ``export_dir`` (a folder, or a URI in object storage) as a pyfunc model of cell run ``run_id``
    and register a new version.

    Version tags: ``study``, ``cell``, ``data_hash``, ``checkpoint``, ``metric.<k>`` for each of
    ``metrics`` and ``metric_name``/``metric_value`` for ``primary_metric``; :func:`set_champion`
    reads them. Returns the new ``ModelVersion`` (None on ranks other than 0).
    """
    if rank != 0:
        return None
    metrics = {k: float(v) for k, v in (metrics or {}).items()}
    if primary_metric is not None and primary_metric not in metrics:
        raise KeyError(f"primary_metric {primary_metric!r} not among metrics {sorted(metrics)}")
    tags = {TAG_STUDY: study, TAG_CELL: cell}
    if data_hash:
        tags[TAG_DATA_HASH] = data_hash
    if checkpoint_dir:
        tags[TAG_CHECKPOINT] = str(checkpoint_dir)
    tags.update({f"{METRIC_TAG_PREFIX}{k}": repr(v) for k, v in metrics.items()})
    if primary_metric is not None:
        tags[TAG_METRIC_NAME] = primary_metric
        tags[TAG_METRIC_VALUE] = repr(metrics[primary_metric])

    client = client_for(tracking_uri, registry_uri)
    package_dir = Path(__file__).resolve().parents[1]
    with tempfile.TemporaryDirectory(prefix="magdi-student-") as tmp, use_tracking(tracking_uri, registry_uri):
        staged = Path(tmp) / "student"
        stage_export(_fetched(export_dir, Path(tmp) / "export"), staged)
        prev_status = client.get_run(run_id).info.status
        active = mlflow.active_run()
        # The fluent API is the only one that logs a model; it needs the run active so the
        # LoggedModel lands in the run's experiment (else in experiment 0, under ./mlruns).
        if active is not None and active.info.run_id == run_id:
            run_ctx = contextlib.nullcontext()
        else:
            run_ctx = mlflow.start_run(run_id=run_id, nested=active is not None)
        with run_ctx:
            info = mlflow.pyfunc.log_model(
                name=MODEL_ARTIFACT_NAME,
                python_model=str(MODEL_CODE),  # models from code: the file, not a pickle
                artifacts={ARTIFACT_KEY: str(staged)},
                code_paths=[str(package_dir)],
                pip_requirements=pinned_requirements(),
                input_example=input_example(max_new_tokens),
                model_config={"max_new_tokens": int(max_new_tokens)},
                tags={TAG_STUDY: study, TAG_CELL: cell},
            )
        if prev_status != client.get_run(run_id).info.status:
            # Leaving the fluent run marked it FINISHED; the caller still owns the run's status.
            client.update_run(run_id, status=prev_status)
        version = mlflow.register_model(info.model_uri, model_name, tags=tags)
    client.update_model_version(model_name, version.version, description=f"study {study}, cell {cell}")
    return client.get_model_version(model_name, version.version)


def _metric_of(client, version: ModelVersion, metric: str) -> float | None:
    """The version's value of ``metric``: its tags first, else the source run's final metric."""
    tags = version.tags or {}
    raw = tags.get(f"{METRIC_TAG_PREFIX}{metric}")
    if raw is None and tags.get(TAG_METRIC_NAME) == metric:
        raw = tags.get(TAG_METRIC_VALUE)
    if raw is None and version.run_id:
        try:
            raw = client.get_run(version.run_id).data.metrics.get(metric)
        except Exception:  # run deleted or on another tracking server: tags are all we have
            raw = None
    try:
        value = float(raw) if raw is not None else None
    except ValueError:
        return None
    return value if value is not None and math.isfinite(value) else None


def set_champion(
    name: str,
    metric: str,
    mode: str = "min",
    *,
    tracking_uri: str,
    registry_uri: str | None = None,
    alias: str = CHAMPION,
) -> ModelVersion:
    """Point ``alias`` at the version of ``name`` with the best ``metric`` (ties: the newest version).

    Raises ``ValueError`` when no version carries a finite value of ``metric``.
    """
    if mode not in ("min", "max"):
        raise ValueError(f"mode must be 'min' or 'max', not {mode!r}")
    client = client_for(tracking_uri, registry_uri)
    versions = client.search_model_versions(f"name = '{name}'")
    scored = [(v, _metric_of(client, v, metric)) for v in versions]
    scored = [(v, s) for v, s in scored if s is not None]
    if not scored:
        raise ValueError(f"no version of {name!r} has a value for metric {metric!r}")
    sign = 1.0 if mode == "min" else -1.0
    best, _ = min(scored, key=lambda vs: (sign * vs[1], -int(vs[0].version)))
    client.set_registered_model_alias(name, alias, best.version)
    return client.get_model_version(name, best.version)
