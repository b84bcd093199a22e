"""Checkpoints that prove themselves (train/checkpoint.py, launch/resolve.py) and a run that stops
when its loss diverges, with real DeepSpeed files damaged on disk and real ``magdi-dist train``
processes."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys

import pytest
from launchers import REPO, SMALL, clean_env, write_config

from magdi_dist.train.checkpoint import MARKER, complete_checkpoints, verify

pytestmark = pytest.mark.slow


def _train(cfg, *overrides):
    return subprocess.run([sys.executable, "-m", "magdi_dist.cli", "train", "--config", str(cfg), *overrides],
                          cwd=REPO, env={**clean_env(), "OMP_NUM_THREADS": "1"}, capture_output=True, text=True,
                          timeout=600)


def _model_states(ckpt):
    (states,) = ckpt.rglob("mp_rank_00_model_states.pt")
    return states


@pytest.fixture(scope="module")
def _stopped(tmp_path_factory):
    """A run stopped after step 4 with complete checkpoints at steps 2 and 4 (trained once)."""
    root = tmp_path_factory.mktemp("stopped")
    out = root / "run"
    cfg = write_config(root / "c.yaml", {**SMALL, "train": {**SMALL["train"], "save_every": 2,
                                                             "log_every": 1, "output_dir": str(out)}})
    proc = _train(cfg, "train.stop_after=4")
    assert proc.returncode == 0, proc.stderr[-3000:]
    assert [p.name for p in complete_checkpoints(out)] == ["step-000002", "step-000004"]
    return out


@pytest.fixture()
def stopped_run(_stopped, tmp_path):
    """A copy of that run for this test to damage, with a config that names the copy."""
    out = tmp_path / "run"
    shutil.copytree(_stopped, out)
    cfg = write_config(tmp_path / "c.yaml", {**SMALL, "train": {**SMALL["train"], "save_every": 2,
                                                                 "log_every": 1, "output_dir": str(out)}})
    return cfg, out


def test_a_bit_flip_is_caught_and_the_previous_checkpoint_taken(stopped_run):
    cfg, out = stopped_run
    newest = out / "checkpoints" / "step-000004"
    marker = json.loads((newest / MARKER).read_text())
    assert marker["step"] == 4 and any(name.endswith("model_states.pt") for name in marker["files"])
    assert verify(newest) == []
    states = _model_states(newest)
    data = bytearray(states.read_bytes())
    data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: the file still loads
    states.write_bytes(bytes(data))
    assert verify(newest, hashes=False) == [] and "sha256" in verify(newest)[0]

    proc = _train(cfg)
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert f"checkpoint {newest} is corrupt" in said and str(states) in said
    assert "resumed from" in said and "step-000002" in said.split("resumed from", 1)[1].splitlines()[0]
    assert (out / "checkpoints" / "step-000004.corrupt" / "CORRUPT.txt").is_file()
    assert [p.name for p in complete_checkpoints(out)][-1] == "step-000006"
    assert (out / "export" / "model.safetensors").is_file()


def test_no_intact_checkpoint_left_stops_with_exit_2(stopped_run):
    cfg, out = stopped_run
    for ckpt in complete_checkpoints(out):
        states = _model_states(ckpt)
        states.write_bytes(states.read_bytes()[:1000])  # truncated
    proc = _train(cfg)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "every complete checkpoint" in proc.stderr and "failed verification" in proc.stderr
    assert "bytes, " in proc.stdout and "were written" in proc.stdout  # each file named, with its sizes
    assert "Traceback" not in proc.stderr
    assert not (out / "export").exists()


def _du(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


@pytest.fixture()
def tmpfs(tmp_path):
    """A real small filesystem: a tmpfs mounted under the test's temp dir (needs root), unmounted after."""
    mount = tmp_path / "disk"
    mount.mkdir()

    def mounted(size: int):
        done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                              capture_output=True, text=True)
        if done.returncode != 0:
            pytest.skip(f"cannot mount a tmpfs here: {done.stderr.strip()}")
        return mount

    yield mounted
    subprocess.run(["umount", str(mount)], capture_output=True)


def test_a_full_disk_is_named_and_leaves_no_partial_checkpoint(stopped_run, tmpfs, tmp_path):
    cfg, out = stopped_run  # measured on a roomy disk: the shards and one checkpoint take this much
    ckpt = _du(out / "checkpoints" / "step-000002")
    rest = _du(out) - _du(out / "checkpoints")
    # Room for everything but half a checkpoint: the first save runs out of space while writing.
    disk = tmpfs(rest + ckpt // 2)
    run = disk / "run"
    proc = _train(cfg, f"train.output_dir={run}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"no space left on {run / 'checkpoints'} while writing checkpoint step-000002" in proc.stderr
    assert "the partial checkpoint was removed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "checkpoints" / "step-000002").exists() and complete_checkpoints(run) == []


def test_a_save_that_cannot_fit_is_refused_before_writing(stopped_run, tmpfs):
    cfg, out = stopped_run
    ckpt = _du(out / "checkpoints" / "step-000002")
    rest = _du(out) - _du(out / "checkpoints")
    disk = tmpfs(rest + ckpt + ckpt // 2)  # one checkpoint fits, a second one does not
    run = disk / "run"
    proc = _train(cfg, f"train.output_dir={run}")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"no space left on {run / 'checkpoints'} for checkpoint step-000004: need ~" in proc.stderr
    assert "(the size of step-000002)" in proc.stderr
    assert [p.name for p in complete_checkpoints(run)] == ["step-000002"]  # intact, resumable


def test_a_diverging_loss_stops_the_run_before_a_checkpoint_or_export(tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", {**SMALL, "train": {**SMALL["train"], "save_every": 2, "lr": 1e30,
                                                                 "warmup_steps": 0, "output_dir": str(out)}})
    proc = _train(cfg)
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "loss = nan" in proc.stderr.replace("inf", "nan") and "Traceback" not in proc.stderr
    assert not (out / "export").exists() and complete_checkpoints(out) == []
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss"] != last["loss"] or abs(last["loss"]) == float("inf")  # the diverged step is recorded
