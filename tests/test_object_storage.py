"""Runs stored in object storage (storage.py, launch/stage.py) against a real S3 server (moto):
shards, checkpoints, run.json and the export land in the bucket; a run resumed on a "node" with an
empty scratch disk ends with the weights of an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from launchers import REPO, SMALL, assert_same_run, clean_env, write_config
from s3_server import objects, s3_server

from magdi_dist.config import durable_path

pytestmark = pytest.mark.slow
PREFIX = "runs/tiny/"


def test_a_storage_uri_stays_a_uri():
    assert durable_path("tiny", "s3://magdi/runs/") == "s3://magdi/runs/tiny"
    assert durable_path("s3://other/x", "/local") == "s3://other/x"


def _cli(env, *args, scratch):
    return subprocess.run([sys.executable, "-m", "magdi_dist.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**clean_env(), **env, "MAGDI_SCRATCH": str(scratch), "OMP_NUM_THREADS": "1"},
                          timeout=900)


def test_two_ranks_train_into_a_bucket_and_resume_on_a_fresh_node(tmp_path):
    cfg = write_config(tmp_path / "small.yaml", {**SMALL, "train": {**SMALL["train"], "save_every": 2,
                                                                     "output_dir": "tiny"}})
    with s3_server(tmp_path / "s3") as env:
        train = ["train", "--config", str(cfg), "--nproc-per-node", "2", "--storage", "s3://magdi/runs"]
        first = _cli(env, *train, "train.stop_after=4", scratch=tmp_path / "node-a")
        assert first.returncode == 0, first.stdout[-2000:] + first.stderr[-4000:]
        stored = objects(env, "magdi", PREFIX)
        names = set(stored)
        assert {f"{PREFIX}run.json", f"{PREFIX}resolved_config.yaml", f"{PREFIX}shards/manifest.json",
                f"{PREFIX}checkpoints/step-000004/COMPLETE", f"{PREFIX}metrics.jsonl"} <= names
        assert not any(n.startswith(f"{PREFIX}export/") for n in names)  # stopped before the end
        assert not any(n.endswith(".magdi-run.lock") for n in names)  # released
        marker = json.loads(stored[f"{PREFIX}checkpoints/step-000004/COMPLETE"])
        assert all(f"{PREFIX}checkpoints/step-000004/{f}" in names for f in marker["files"])
        run = json.loads(stored[f"{PREFIX}run.json"])
        assert run["config"]["train"]["output_dir"] == "s3://magdi/runs/tiny"
        assert run["data"]["manifest"] == "s3://magdi/runs/tiny/shards/manifest.json"
        assert not (REPO / "s3:").exists() and not (REPO / "tiny").exists()  # nothing written locally

        # A second preparation leaves the manifest object as it was.
        again = _cli(env, "preprocess", "--config", str(cfg), "--local", "--storage", "s3://magdi/runs",
                     scratch=tmp_path / "node-b")
        assert again.returncode == 0, again.stderr[-3000:]
        assert objects(env, "magdi", f"{PREFIX}shards/manifest.json") == {
            f"{PREFIX}shards/manifest.json": stored[f"{PREFIX}shards/manifest.json"]}

        # The first node is gone with its disk; another one resumes from the bucket alone.
        shutil.rmtree(tmp_path / "node-a")
        second = _cli(env, *train, scratch=tmp_path / "node-c")
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-4000:]
        assert "resumed from" in second.stdout + second.stderr
        stored = objects(env, "magdi", PREFIX)
        assert f"{PREFIX}export/model.safetensors" in stored
        assert sorted(n.split("/")[3] for n in stored if "/checkpoints/" in n and n.endswith("COMPLETE")) == [
            "step-000004", "step-000006"]  # keep_last_k=2: step 2 pruned from the bucket too

    # The same run, uninterrupted, on a local disk: the same weights and curve.
    ref = tmp_path / "ref"
    local = _cli({}, "train", "--config", str(cfg), "--nproc-per-node", "2", f"train.output_dir={ref}",
                 scratch=tmp_path / "node-d")
    assert local.returncode == 0, local.stderr[-3000:]
    downloaded = tmp_path / "downloaded"
    for name, data in stored.items():
        if name.startswith(f"{PREFIX}export/") or name == f"{PREFIX}metrics.jsonl":
            target = downloaded / name[len(PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    assert_same_run(ref, downloaded, "stored and resumed vs local uninterrupted")
