"""Where tracking data lives: an embedded SQLite store under the output directory, or any MLflow URI.

The embedded default needs no server, so a single-node run (or the CPU demo) tracks out of the box.
Its experiment gets an explicit artifact location next to the database: without one, MLflow's SQL
store falls back to ``./mlruns`` relative to the *current working directory*, which scatters
artifacts wherever the job happened to start. A remote server (``http://host:port``) decides the
artifact location itself (proxied ``mlflow-artifacts:/`` by default), so we leave it alone there.

On a multi-node Ray cluster the embedded store only works when ``output_dir`` is on shared storage
and only rank 0 writes (which is what :mod:`magdi_dist.track.runs` enforces); otherwise point
``uri`` at an ``mlflow server``.
"""

from __future__ import annotations

import contextlib
import os
from collections.abc import Iterator
from pathlib import Path
from urllib.parse import unquote

from mlflow.tracking import MlflowClient

EMBEDDED_DIRNAME = "mlflow"
DB_FILENAME = "mlflow.db"
ARTIFACTS_DIRNAME = "artifacts"
DEFAULT_EXPERIMENT = "magdi-dist"


def embedded_paths(output_dir: str | os.PathLike) -> tuple[Path, Path]:
    """(database file, artifact folder) of the embedded store under ``output_dir``."""
    root = Path(output_dir).expanduser().resolve() / EMBEDDED_DIRNAME
    return root / DB_FILENAME, root / ARTIFACTS_DIRNAME


def resolve_tracking_uri(output_dir: str | os.PathLike, uri: str | None = None) -> str:
    """The tracking URI to use: ``uri`` when given (any MLflow URI), else the embedded SQLite store.

    The embedded store's folders are created here so callers can hand the URI straight to
    ``MlflowClient``; the database schema itself is created by MLflow on first use.
    """
    if uri:
        return uri
    db, artifacts = embedded_paths(output_dir)
    db.parent.mkdir(parents=True, exist_ok=True)
    artifacts.mkdir(parents=True, exist_ok=True)
    # Four slashes: sqlite:/// + an absolute path. Relative sqlite paths would again depend on cwd.
    return f"sqlite:///{db}"


def default_artifact_location(tracking_uri: str) -> str | None:
    """Artifact folder for new experiments of a local database store, ``None`` for servers.

    For ``sqlite:///.../mlflow.db`` it is the sibling ``artifacts`` folder, so the database and its
    artifacts travel together (this is the embedded layout, and a sane one for any sqlite URI).
    """
    prefix = "sqlite:///"
    if not tracking_uri.startswith(prefix):
        return None
    # Not urlparse: for sqlite:////abs/path it yields "//abs/path", and pathlib keeps a leading "//".
    raw = unquote(tracking_uri[len(prefix) :].split("?", 1)[0])
    if not raw or raw == ":memory:":
        return None
    db_path = Path(raw).resolve()  # relative sqlite paths are relative to cwd, as MLflow reads them
    folder = db_path.parent / ARTIFACTS_DIRNAME
    folder.mkdir(parents=True, exist_ok=True)
    return folder.as_uri()


def ensure_experiment(tracking_uri: str, name: str = DEFAULT_EXPERIMENT) -> str:
    """Id of experiment ``name``, creating it (with the right artifact location) when missing.

    A deleted experiment of that name is restored rather than failing: MLflow keeps deleted names
    reserved, and a study re-run after a cleanup should just work.
    """
    client = MlflowClient(tracking_uri=tracking_uri, registry_uri=tracking_uri)
    exp = client.get_experiment_by_name(name)
    if exp is not None:
        if exp.lifecycle_stage == "deleted":
            client.restore_experiment(exp.experiment_id)
        return exp.experiment_id
    try:
        return client.create_experiment(name, artifact_location=default_artifact_location(tracking_uri))
    except Exception:
        # Another process (e.g. a concurrent study) created it between our lookup and create.
        exp = client.get_experiment_by_name(name)
        if exp is None:
            raise
        return exp.experiment_id


def client_for(tracking_uri: str, registry_uri: str | None = None) -> MlflowClient:
    """A client bound to explicit URIs (never the process-global ones, which other code may change)."""
    return MlflowClient(tracking_uri=tracking_uri, registry_uri=registry_uri or tracking_uri)


@contextlib.contextmanager
def use_tracking(tracking_uri: str, registry_uri: str | None = None) -> Iterator[None]:
    """Temporarily point MLflow's *fluent* API (``mlflow.pyfunc.log_model``, ``load_model``) at a store.

    The fluent API only reads process-global state. ``mlflow.set_tracking_uri`` also exports
    ``MLFLOW_TRACKING_URI``/``MLFLOW_REGISTRY_URI`` to the environment and cannot be reset to "unset"
    for the registry, so we save and restore the module globals and the environment variables
    ourselves: a library must not leave the caller's process pointed at our store.
    """
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    saved_env = {k: os.environ.get(k) for k in ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")}
    saved_trk = getattr(trk_utils, "_tracking_uri", None)
    saved_reg = getattr(reg_utils, "_registry_uri", None)
    mlflow.set_tracking_uri(tracking_uri)
    mlflow.set_registry_uri(registry_uri or tracking_uri)
    try:
        yield
    finally:
        mlflow.set_tracking_uri(saved_trk)
        reg_utils._registry_uri = saved_reg
        for key, value in saved_env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value
