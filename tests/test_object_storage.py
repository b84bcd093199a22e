"""Runs stored in object storage (storage.py, launch/stage.py) against a real S3 server (moto):
shards, checkpoints, run.json and the export land in the bucket; a run resumed on a "node" with an
empty scratch disk prepares again without changing the manifest object and ends with the weights of
an uninterrupted run, bit for bit."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launchers import REPO, assert_same_run, clean_env
from s3_server import SMALL, objects, reference_run, s3_server

from magdi_dist.config import durable_path, load_config, with_durable_outputs
from magdi_dist.launch import stage

pytestmark = pytest.mark.slow
PREFIX = "runs/tiny/"


def test_a_storage_uri_stays_a_uri():
    assert durable_path("tiny", "s3://magdi/runs/") == "s3://magdi/runs/tiny"
    assert durable_path("s3://other/x", "/local") == "s3://other/x"


def _cli(env, *args, scratch):
    return subprocess.run([sys.executable, "-m", "magdi_dist.cli", *args], cwd=REPO, capture_output=True, text=True,
                          env={**clean_env(), **env, "MAGDI_SCRATCH": str(scratch), "OMP_NUM_THREADS": "1"},
                          timeout=900)


def test_two_ranks_train_into_a_bucket_and_resume_on_a_fresh_node(tmp_path, tmp_path_factory):
    # The shared test run, keeping 2 checkpoints here: pruning reaches the bucket too.
    run_args = [*SMALL, "train.keep_last_k=2", "train.output_dir=tiny"]
    with s3_server(tmp_path / "s3") as env:
        train = ["train", "--config", "configs/tiny.yaml", "--nproc-per-node", "2", "--storage", "s3://magdi/runs",
                 *run_args]
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
        manifest = stored[f"{PREFIX}shards/manifest.json"]

        # What rank 1 pulls to resume on a node of its own: the newest complete checkpoint, and of the
        # per-rank files only its own; a checkpoint the node holds complete but the bucket does not (its
        # upload was cut off) is dropped, so no rank resumes from a step the others cannot find.
        with pytest.MonkeyPatch.context() as mp:
            for key, value in {**env, "MAGDI_SCRATCH": str(tmp_path / "node-b")}.items():
                mp.setenv(key, value)
            stored_cfg = with_durable_outputs(load_config(REPO / "configs" / "tiny.yaml", run_args), "s3://magdi/runs")
            mirror = Path(stage.on_node(stored_cfg).train.output_dir)
            (mirror / "checkpoints" / "step-000006").mkdir(parents=True)
            (mirror / "checkpoints" / "step-000006" / "COMPLETE").write_text("{}")
            got = {p.relative_to(mirror).as_posix() for p in stage.pull(stored_cfg, shards=False, rank=1)}
        step4 = {n[len(PREFIX):] for n in names if n.startswith(f"{PREFIX}checkpoints/step-000004/")}
        rank0 = {"checkpoints/step-000004/zero_pp_rank_0_mp_rank_00_optim_states.pt",
                 "checkpoints/step-000004/rng_state_rank0.pt"}
        assert rank0 <= step4 and got == (step4 - rank0) | {"metrics.jsonl"}
        assert not (mirror / "checkpoints" / "step-000006").exists()

        # The first node is gone with its disk; another one resumes from the bucket alone. It prepares
        # the data again first (a second preparation, from what the bucket holds): nothing changes.
        shutil.rmtree(tmp_path / "node-a")
        second = _cli(env, *train, scratch=tmp_path / "node-c")
        assert second.returncode == 0, second.stdout[-2000:] + second.stderr[-4000:]
        assert "resumed from" in second.stdout + second.stderr and "nothing to do" in second.stdout + second.stderr
        stored = objects(env, "magdi", PREFIX)
        assert stored[f"{PREFIX}shards/manifest.json"] == manifest
        assert f"{PREFIX}export/model.safetensors" in stored
        assert sorted(n.split("/")[3] for n in stored if "/checkpoints/" in n and n.endswith("COMPLETE")) == [
            "step-000004", "step-000006"]  # keep_last_k=2: step 2 pruned from the bucket too

    # The same run, uninterrupted, on a local disk: the same weights and curve.
    ref = reference_run(tmp_path_factory)
    downloaded = tmp_path / "downloaded"
    for name, data in stored.items():
        if name.startswith(f"{PREFIX}export/") or name == f"{PREFIX}metrics.jsonl":
            target = downloaded / name[len(PREFIX):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    assert_same_run(ref, downloaded, "stored and resumed vs local uninterrupted")
