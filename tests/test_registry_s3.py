"""A study stored in object storage (``output_dir: s3://...``; a real S3 server, moto) whose MLflow
artifacts are in the same bucket (a real sqlite tracking store whose experiment's artifact location is
``s3://...``; the clients write and read there with ``MLFLOW_S3_ENDPOINT_URL``): its one cell trains into
the bucket, is evaluated and registered from there and crowned ``champion``; then every node's scratch
is deleted and a fresh process, which never saw them, loads ``models:/NAME@champion`` and answers as
the trained export did; and the study run again from a fresh driver trains nothing."""

from __future__ import annotations

import json
import os
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
import yaml
from mlflow_server import mlflow_globals_restored, sqlite_template
from s3_server import objects, s3_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
QUESTION = "Ava has 3 pens. Ava gets 4 more. How many pens does Ava have now?"
TINY = {  # configs/tiny.yaml at test size, two steps (the fewest that train and evaluate)
    "model.base": {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64},
    "model.gcn_hidden": 16, "data.synthetic.n": 40, "data.synthetic.rounds": 2, "data.max_len": 96,
    "data.vocab_size": 300, "train.max_steps": 2, "train.eval_every": 2, "train.save_every": 0,
    "train.micro_batch_size": 2, "train.warmup_steps": 0, "train.progress": False, "train.peak_flops": 1e12,
}  # fmt: skip
LOAD = """
import json, sys, mlflow
model = mlflow.pyfunc.load_model(sys.argv[1])  # the registry's copy, as a serving machine loads it
print(json.dumps({"answers": model.predict([sys.argv[2]], params={"max_new_tokens": 8}),
                  "files": model.unwrap_python_model().path}))
"""


def _answers_of_export(export: Path) -> list[str]:
    """The trained export on the node, answering through the registered model's class, one thread (as
    the loading process below)."""
    import types

    import torch

    from magdi_dist.track.pyfunc_student import StudentModel

    threads = torch.get_num_threads()
    torch.set_num_threads(1)
    try:
        model = StudentModel()
        model.load_context(types.SimpleNamespace(artifacts={"student": str(export)}, model_config={}))
        return model.predict(None, [QUESTION], params={"max_new_tokens": 8})
    finally:
        torch.set_num_threads(threads)


def test_a_cell_registered_from_the_bucket_answers_after_the_nodes_are_gone(tmp_path, monkeypatch):
    from magdi_dist.recipes.study import run_study
    from magdi_dist.study.config import load_study

    with s3_server(tmp_path / "s3") as s3:
        store = {**s3, "MLFLOW_S3_ENDPOINT_URL": s3["AWS_ENDPOINT_URL"]}
        for key, value in {**store, "MAGDI_SCRATCH": str(tmp_path / "node")}.items():
            monkeypatch.setenv(key, value)  # the driver's, and the Ray workers' it starts
        (tmp_path / "tracking").mkdir()
        shutil.copyfile(sqlite_template(), tmp_path / "tracking" / "mlflow.db")
        url = f"sqlite:///{tmp_path / 'tracking' / 'mlflow.db'}"
        with mlflow_globals_restored():
            from mlflow.tracking import MlflowClient

            MlflowClient(url).create_experiment("magdi-dist", artifact_location="s3://magdi/mlflow")
            study_file = tmp_path / "study.yaml"
            study_file.write_text(yaml.safe_dump({
                "name": "stored", "base_config": str(REPO / "configs" / "tiny.yaml"), "overrides": TINY,
                "sizes": [{"name": "t"}], "model_name": "stored-student", "output_dir": "s3://magdi/studies/stored",
                "tracking_uri": url, "num_workers": 1, "evaluation": {"synthetic_n": 4, "max_new_tokens": 8},
            }))
            summary = run_study(load_study(study_file))
            assert summary["status"] == "FINISHED", summary
            assert summary["champion"]["uri"] == "models:/stored-student@champion"
            stored = objects(s3, "magdi")
            cell = "studies/stored/cells/t-magdi/"
            assert {f"{cell}export/model.safetensors", f"{cell}cell_result.json", f"{cell}run.json",
                    "studies/stored/study_summary.json"} <= set(stored)
            assert any(k.startswith(f"{cell}eval/") for k in stored)  # the evaluation, next to the run
            weights = [k for k in stored if k.startswith("mlflow/") and k.endswith("/model.safetensors")]
            # The registered weights are the exported ones, in the same bucket.
            assert weights and all(stored[k] == stored[f"{cell}export/model.safetensors"] for k in weights)
            # log_student also takes the export where it lies in the bucket (the study logged its pulled copy).
            from magdi_dist.track.registry import log_student

            direct = log_student(f"s3://magdi/{cell}export", tracking_uri=url, run_id=summary["cells"][0]["run_id"],
                                 model_name="stored-direct", study="stored", cell="t-magdi", rank=0,
                                 max_new_tokens=8)
            logged = {k: v for k, v in objects(s3, "magdi", "mlflow/").items() if k.endswith("/model.safetensors")}
            assert int(direct.version) == 1 and len(logged) == len(weights) + 1
            assert set(logged.values()) == {stored[f"{cell}export/model.safetensors"]}
            # The trained export as the driver's node holds it, answering before anything is deleted.
            from magdi_dist.launch.stage import here

            before = _answers_of_export(here("s3://magdi/studies/stored/cells/t-magdi") / "export")
            # The nodes are gone: their scratch (mirrors of the run, shards, export); the tracking store
            # keeps only its database.
            shutil.rmtree(tmp_path / "node")
            assert [p.name for p in (tmp_path / "tracking").iterdir()] == ["mlflow.db"]
            fresh = tmp_path / "elsewhere"
            fresh.mkdir()
            env = {**{k: v for k, v in os.environ.items() if not k.startswith(("MAGDI_", "MLFLOW_TRACKING"))},
                   "MLFLOW_TRACKING_URI": url, "MAGDI_SCRATCH": str(fresh / "scratch"), "OMP_NUM_THREADS": "1"}
            proc = subprocess.run([sys.executable, "-c", LOAD, "models:/stored-student@champion", QUESTION],
                                  cwd=fresh, env=env, capture_output=True, text=True, timeout=300)
            assert proc.returncode == 0, proc.stderr[-4000:]
            after = json.loads(proc.stdout.strip().splitlines()[-1])
            # The same study again from a fresh driver (its scratch empty too): the bucket and the
            # tracking store say the cell is done, so nothing trains again.
            monkeypatch.setenv("MAGDI_SCRATCH", str(fresh / "driver"))
            again = run_study(load_study(study_file))
            assert again["status"] == "FINISHED", again
            assert [c["status"] for c in again["cells"]] == ["skipped"]
            assert again["cells"][0]["run_id"] == summary["cells"][0]["run_id"]
            assert again["champion"]["uri"] == summary["champion"]["uri"]
    assert after["answers"] == before and isinstance(before[0], str)
    assert not after["files"].startswith(str(tmp_path / "node"))
