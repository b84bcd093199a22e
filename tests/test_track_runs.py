"""Run layout details on the embedded SQLite store: ranks, params, skip logic, metric batching."""

from __future__ import annotations

import json
import os

import pytest
from mlflow_server import fresh_sqlite_store, mlflow_globals_restored

from magdi_dist.track import (
    MetricsLogger,
    cell_run,
    ensure_experiment,
    find_cell_run,
    finish_run,
    log_cell_result,
    resolve_tracking_uri,
    start_cell_run,
    start_study_run,
    use_tracking,
)
from magdi_dist.track.params import MAX_PARAM_VALUE, TRUNCATION_MARK
from magdi_dist.track.store import client_for


@pytest.fixture(autouse=True)
def _restore_mlflow_globals():
    with mlflow_globals_restored():
        yield


@pytest.fixture
def store(tmp_path):
    uri = fresh_sqlite_store(tmp_path / "out")
    return uri, ensure_experiment(uri, "runs-test")


def test_embedded_store_layout(tmp_path):
    out = tmp_path / "out"
    uri = fresh_sqlite_store(out)
    assert uri == f"sqlite:///{out.resolve()}/mlflow/mlflow.db"
    assert resolve_tracking_uri(out, "http://127.0.0.1:5000") == "http://127.0.0.1:5000"
    exp_id = ensure_experiment(uri, "layout")
    assert ensure_experiment(uri, "layout") == exp_id  # idempotent
    exp = client_for(uri).get_experiment(exp_id)
    assert exp.artifact_location == (out.resolve() / "mlflow" / "artifacts").as_uri()
    # Artifacts really land there, not in ./mlruns of the cwd.
    run_id = start_study_run(uri, exp_id, "s", {"a": 1}, rank=0)
    files = {p.name for p in (out / "mlflow" / "artifacts").rglob("*") if p.is_file()}
    assert "config.json" in files
    assert client_for(uri).get_run(run_id).info.artifact_uri.startswith(exp.artifact_location)


def test_other_ranks_log_nothing(store):
    uri, exp_id = store
    assert start_study_run(uri, exp_id, "s", {"a": 1}, rank=1) is None
    assert start_cell_run(uri, "whatever", "s", "c", {"a": 1}, rank=3) is None
    parent = start_study_run(uri, exp_id, "s", {"a": 1}, rank=0)
    child = start_cell_run(uri, parent, "s", "c", {"a": 1}, rank=0)
    # A worker that somehow holds the run id still must not write.
    logger = MetricsLogger(uri, child, rank=1, flush_every=1)
    logger(0, {"train/loss": 1.0})
    logger.close()
    log_cell_result(uri, child, rank=2, eval_metrics={"eval_loss": 1.0}, param_count=10)
    finish_run(uri, child, rank=1, status="FAILED")
    run = client_for(uri).get_run(child)
    assert run.data.metrics == {}
    assert run.info.status == "RUNNING"
    assert logger.batches_sent == 0
    assert len(client_for(uri).search_runs([exp_id])) == 2  # one parent, one cell: never one per rank


def test_params_flattened_truncated_and_batched(store, tmp_path):
    uri, exp_id = store
    long_value = "x" * 2000
    long_key = "k" * 300
    config = {
        "model": {"name": "tiny", "hidden": 32, "extra": {"rope": None, "tie": True}},
        "notes": long_value,
        "lrs": [1e-3, 3e-4],
        long_key: 1,
        "many": {f"p{i:03d}": i for i in range(230)},  # > 2 batches of 100 params
    }
    parent = start_study_run(uri, exp_id, "s", {}, rank=0)
    child = start_cell_run(uri, parent, "s", "c", config, rank=0)
    client = client_for(uri)
    params = client.get_run(child).data.params
    assert params["model.name"] == "tiny"
    assert params["model.hidden"] == "32"
    assert params["model.extra.rope"] == "null"
    assert params["model.extra.tie"] == "true"
    assert json.loads(params["lrs"]) == [1e-3, 3e-4]
    assert params["many.p229"] == "229"
    assert len(params["notes"]) == MAX_PARAM_VALUE and params["notes"].endswith(TRUNCATION_MARK)
    clipped = [k for k in params if k.endswith("k" * 50)]
    assert len(clipped) == 1 and len(clipped[0]) <= 250
    assert len(params) == 5 + 1 + 1 + 230
    # The full, unclipped config is an artifact of the run.
    local = client.download_artifacts(child, "config.json", dst_path=str(tmp_path))
    with open(local) as f:
        assert json.load(f)["notes"] == long_value


def test_find_cell_run_skips_only_finished_same_config(store):
    uri, exp_id = store
    cfg = {"size": "s", "steps": 10}
    parent = start_study_run(uri, exp_id, "study-a", {"sizes": ["s", "m"]}, rank=0)
    assert find_cell_run("runs-test", "study-a", "s", tracking_uri=uri) is None

    with cell_run(uri, parent, "study-a", "s", cfg, rank=0) as run_id:
        log_cell_result(uri, run_id, rank=0, eval_metrics={"eval_loss": 2.0})
    with pytest.raises(RuntimeError), cell_run(uri, parent, "study-a", "m", cfg, rank=0):
        raise RuntimeError("cell crashed")
    crashed = start_cell_run(uri, parent, "study-a", "l", cfg, rank=0)  # never finished

    found = find_cell_run("runs-test", "study-a", "s", tracking_uri=uri, config=cfg)
    assert found is not None and found.info.run_id == run_id
    assert find_cell_run(exp_id, "study-a", "s", tracking_uri=uri) is not None  # id works as well as name
    assert find_cell_run("runs-test", "study-a", "m", tracking_uri=uri) is None  # FAILED
    assert client_for(uri).get_run(crashed).info.status == "RUNNING"
    assert find_cell_run("runs-test", "study-a", "l", tracking_uri=uri) is None  # crashed mid-run
    assert find_cell_run("runs-test", "study-a", "s", tracking_uri=uri, config={**cfg, "steps": 20}) is None
    assert find_cell_run("runs-test", "study-b", "s", tracking_uri=uri) is None
    assert find_cell_run("no-such-experiment", "study-a", "s", tracking_uri=uri) is None

    # Re-running the same study reuses its parent; a changed study config gets a new one.
    assert start_study_run(uri, exp_id, "study-a", {"sizes": ["s", "m"]}, rank=0) == parent
    assert start_study_run(uri, exp_id, "study-a", {"sizes": ["s"]}, rank=0) != parent


def test_metrics_logger_buffers_into_few_batches(store):
    import torch

    uri, exp_id = store
    parent = start_study_run(uri, exp_id, "s", {}, rank=0)
    child = start_cell_run(uri, parent, "s", "c", {}, rank=0)
    with MetricsLogger(uri, child, rank=0, flush_every=50, flush_interval_s=3600) as logger:
        for step in range(60):
            logger(step, {"train/loss": 1.0 / (step + 1), "lr": torch.tensor(0.5), "phase": "warmup"})
        assert logger.batches_sent == 2  # 120 points, flushed at 50 and 100; the rest on close
    assert logger.batches_sent == 3
    client = client_for(uri)
    history = client.get_metric_history(child, "train/loss")
    assert sorted(m.step for m in history) == list(range(60))
    assert {m.value for m in client.get_metric_history(child, "lr")} == {0.5}
    assert "phase" not in client.get_run(child).data.metrics


def test_use_tracking_restores_globals(tmp_path):
    import mlflow

    before = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
    with use_tracking("sqlite:////nonexistent/x.db"):
        assert mlflow.get_tracking_uri() == "sqlite:////nonexistent/x.db"
        assert mlflow.get_registry_uri() == "sqlite:////nonexistent/x.db"
    after = (mlflow.get_tracking_uri(), os.environ.get("MLFLOW_TRACKING_URI"), os.environ.get("MLFLOW_REGISTRY_URI"))
    assert after == before
