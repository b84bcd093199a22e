"""End-to-end tracking on both stores: the embedded SQLite file and a real ``mlflow server`` over HTTP.

Same test bodies for both, so the HTTP path (proxied artifacts, REST registry) is held to exactly
what the local path does. The server is started once per session and always stopped.
"""

from __future__ import annotations

import json
import uuid
from pathlib import Path

import numpy as np
import pandas as pd
import pytest
from mlflow_server import fresh_sqlite_store, make_tiny_student, mlflow_globals_restored, running_mlflow_server

from magdi_dist.study.curve import fit_scaling, plot_scaling
from magdi_dist.track import (
    MetricsLogger,
    cell_run,
    ensure_experiment,
    finish_run,
    git_sha,
    log_cell_result,
    log_study_summary,
    start_study_run,
    use_tracking,
)
from magdi_dist.track.registry import log_student, pinned_requirements, set_champion
from magdi_dist.track.store import client_for

MAX_NEW_TOKENS = 6


@pytest.fixture(scope="session")
def mlflow_server_url(tmp_path_factory):
    with running_mlflow_server(tmp_path_factory.mktemp("mlflow-server")) as url:
        yield url


@pytest.fixture(params=["sqlite", "server"])
def tracking_uri(request, tmp_path):
    with mlflow_globals_restored():
        if request.param == "server":
            yield request.getfixturevalue("mlflow_server_url")
        else:
            yield fresh_sqlite_store(tmp_path / "out")


@pytest.fixture(scope="session")
def students(tmp_path_factory):
    root = tmp_path_factory.mktemp("students")
    return [make_tiny_student(root / f"student-{seed}", seed=seed) for seed in (0, 1)]


def _unique(prefix: str) -> str:
    # The server is shared by the whole session: names must not collide between tests.
    return f"{prefix}-{uuid.uuid4().hex[:8]}"


def test_study_layout_and_summary(tracking_uri, tmp_path):
    exp_id = ensure_experiment(tracking_uri, _unique("layout"))
    study = "scaling"
    parent = start_study_run(tracking_uri, exp_id, study, {"sizes": ["xs", "s"]}, rank=0)
    rows = []
    for i, cell in enumerate(["xs", "s"]):
        cfg = {"model": {"size": cell, "layers": i + 1}, "train": {"steps": 3}}
        with cell_run(tracking_uri, parent, study, cell, cfg, rank=0) as run_id:
            with MetricsLogger(tracking_uri, run_id, rank=0, flush_every=4) as logger:
                for step in range(3):
                    logger(step, {"train/loss": 3.0 - step, "train/tokens_per_s": 100.0})
            log_cell_result(
                tracking_uri,
                run_id,
                rank=0,
                eval_metrics={"eval_loss": 2.5 - i, "accuracy": 0.2 + i / 10},
                param_count=1000 * (i + 1),
                train_flops=1e12 * (i + 1),
                wall_time_s=12.5,
                data_hash="sha256:abc",
                checkpoint_dir=f"/ckpt/{cell}/step-000003",
            )
        rows.append({"cell": cell, "variant": "magdi", "params": np.int64(1000 * (i + 1)), "flops": 1e12 * (i + 1),
                     "eval_ntp_loss": 2.5 - i, "accuracy": 0.2 + i / 10})  # fmt: skip
    fits = fit_scaling(rows)  # the study runner fits and plots; track only logs what it is handed
    png = plot_scaling(rows, tmp_path / "study" / "curve.png", fits=fits)  # logged as scaling_curve.png
    log_study_summary(parent, rows, fits=fits, plot=png, tracking_uri=tracking_uri, rank=0)
    finish_run(tracking_uri, parent, rank=0)

    client = client_for(tracking_uri)
    runs = client.search_runs([exp_id])
    children = [r for r in runs if r.data.tags.get("mlflow.parentRunId") == parent]
    assert len(runs) == 3 and len(children) == 2
    by_cell = {r.data.tags["magdi.cell"]: r for r in children}
    s = by_cell["s"]
    assert s.info.status == "FINISHED" and s.info.run_name == "s"
    assert s.data.params["model.layers"] == "2" and s.data.params["train.steps"] == "3"
    assert s.data.metrics["eval_loss"] == 1.5 and s.data.metrics["param_count"] == 2000
    assert s.data.metrics["train_flops"] == 2e12 and s.data.metrics["wall_time_s"] == 12.5
    assert s.data.tags["magdi.study"] == study
    assert s.data.tags["magdi.data_hash"] == "sha256:abc"
    assert s.data.tags["magdi.checkpoint"] == "/ckpt/s/step-000003"
    sha, _ = git_sha()
    assert s.data.tags.get("mlflow.source.git.commit") == sha  # None outside a git checkout
    assert [m.value for m in sorted(client.get_metric_history(s.info.run_id, "train/loss"), key=lambda m: m.step)] == [
        3.0,
        2.0,
        1.0,
    ]
    # Parent: summary artifacts; the fit is in the JSON even for 2 points.
    names = {a.path for a in client.list_artifacts(parent)}
    assert {"scaling_curve.png", "scaling_fit.json", "scaling_rows.json", "config.json"} <= names
    local = client.download_artifacts(parent, "scaling_fit.json", str(tmp_path))
    assert json.loads(Path(local).read_text()) == json.loads(json.dumps(fits))
    assert fits["variants"]["magdi"]["vs_params"]["ok"] is True
    png = client.download_artifacts(parent, "scaling_curve.png", str(tmp_path))
    assert Path(png).read_bytes()[:8] == b"\x89PNG\r\n\x1a\n"


def _expected_answer(student_dir: Path, question: str) -> str:
    """What the student generates for ``question`` when loaded straight from its HF directory."""
    import torch
    from transformers import AutoModelForCausalLM, AutoTokenizer

    from magdi_dist.data.prompt import format_prompt

    tok = AutoTokenizer.from_pretrained(student_dir)
    model = AutoModelForCausalLM.from_pretrained(student_dir).eval()
    enc = tok([format_prompt(question, None)], return_tensors="pt")  # a tiny student: the plain prompt
    with torch.inference_mode():
        out = model.generate(**enc, do_sample=False, max_new_tokens=MAX_NEW_TOKENS, pad_token_id=tok.pad_token_id)
    return tok.decode(out[0, enc["input_ids"].shape[1] :], skip_special_tokens=True).strip()


def test_registry_champion_and_pyfunc(tracking_uri, students):
    import mlflow

    exp_id = ensure_experiment(tracking_uri, _unique("registry"))
    name = _unique("magdi-student")
    parent = start_study_run(tracking_uri, exp_id, "reg", {}, rank=0)
    versions = []
    for student, (cell, loss) in zip(students, [("xs", 2.0), ("s", 1.5)], strict=True):
        with cell_run(tracking_uri, parent, "reg", cell, {"cell": cell}, rank=0) as run_id:
            log_cell_result(tracking_uri, run_id, rank=0, eval_metrics={"eval_loss": loss, "accuracy": 2.0 - loss})
            assert log_student(student, tracking_uri=tracking_uri, run_id=run_id, model_name=name, study="reg",
                               cell=cell, rank=1) is None  # fmt: skip
            mv = log_student(
                student,
                tracking_uri=tracking_uri,
                run_id=run_id,
                model_name=name,
                study="reg",
                cell=cell,
                rank=0,
                data_hash="sha256:abc",
                metrics={"eval_loss": loss},
                primary_metric="eval_loss",
                checkpoint_dir=f"/ckpt/{cell}",
                max_new_tokens=MAX_NEW_TOKENS,
            )
            # log_student must not end the cell run it logged into.
            assert client_for(tracking_uri).get_run(run_id).info.status == "RUNNING"
        versions.append(mv)
    assert [int(v.version) for v in versions] == [1, 2]
    assert versions[1].tags["metric_name"] == "eval_loss" and float(versions[1].tags["metric_value"]) == 1.5
    assert versions[0].tags["cell"] == "xs" and versions[0].tags["checkpoint"] == "/ckpt/xs"

    assert int(set_champion(name, "eval_loss", "min", tracking_uri=tracking_uri).version) == 2
    # "accuracy" is not on the tags: it is read from the source run's metrics.
    assert int(set_champion(name, "accuracy", "max", tracking_uri=tracking_uri).version) == 2
    assert int(set_champion(name, "eval_loss", "max", tracking_uri=tracking_uri).version) == 1
    with pytest.raises(ValueError, match="no version"):
        set_champion(name, "bleu", tracking_uri=tracking_uri)
    assert int(set_champion(name, "eval_loss", tracking_uri=tracking_uri).version) == 2
    client = client_for(tracking_uri)
    assert int(client.get_model_version_by_alias(name, "champion").version) == 2

    from magdi_dist.track.pyfunc_student import _fallback_prompt, resolve_render_prompt

    assert resolve_render_prompt() is not _fallback_prompt  # the training format is what serves
    question = "Is the sky blue?"
    with use_tracking(tracking_uri):
        model = mlflow.pyfunc.load_model(f"models:/{name}@champion")
        answers = model.predict([question])
        batch = model.predict([question, "What is 2 + 3? Think step by step."])  # padded batch
        from_frame = model.predict(pd.DataFrame({"question": [question]}))
        requirements = Path(mlflow.pyfunc.get_model_dependencies(f"models:/{name}@champion")).read_text()
    assert isinstance(batch, list) and len(batch) == 2 and all(isinstance(a, str) for a in batch)
    # The champion (version 2) is students[1]; its answer is the directory's own greedy answer.
    assert answers == [_expected_answer(students[1], question)] == from_frame
    # Only the exported student was logged: no ZeRO shards, no DeepSpeed helpers.
    logged = {p.name for p in Path(model.unwrap_python_model().path).iterdir()}
    assert {"config.json", "model.safetensors", "tokenizer.json", "graph_encoder.safetensors"} <= logged
    assert not logged & {"global_step7", "latest", "zero_to_fp32.py"}
    for pin in pinned_requirements():
        assert pin in requirements
