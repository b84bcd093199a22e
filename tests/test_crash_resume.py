"""Crash-resume as a cluster sees it: one of 2 ZeRO-3 ranks is SIGKILLed (no exception, no cleanup)
mid-step, or mid-checkpoint-save, after the first epoch boundary; torchrun restarts the group
(``--max-restarts 1``) with the same command line and the run resumes from the newest *complete*
checkpoint, which lies before the boundary. It must end with the uninterrupted run's weights and curve,
bit for bit (CPU, fp32)."""

from __future__ import annotations

import json
import re
import subprocess
import sys

import pytest
from launchers import REPO, SMALL, assert_same_run, clean_env, train_records, write_config

from magdi_dist.train.checkpoint import complete_checkpoints

pytestmark = pytest.mark.slow

# 254 training rows / (16 x 2 ranks): 7 steps per epoch. Checkpoints at 3, 6, 9 and 11 (the end).
TREE = {**SMALL, "train": {**SMALL["train"], "max_steps": 11, "micro_batch_size": 16, "save_every": 3,
                           "keep_last_k": 2, "deepspeed": "zero3"}}
PER_EPOCH = 7


def _launch(cfg, out, kill_at: str | None = None, marker=None) -> subprocess.CompletedProcess:
    env = clean_env()
    # torchrun shares its rendezvous TCPStore with the workers' process group by default, and a
    # restarted group can then read the dead group's gloo addresses and fail to connect (pytorch
    # issue 135712); a store per attempt is the documented workaround.
    env["TORCH_DISABLE_SHARE_RDZV_TCP_STORE"] = "1"
    entry = ["-m", "magdi_dist.launch.rank"]
    if kill_at:
        env.update(KILL_AT=kill_at, KILL_MARKER=str(marker))
        entry = ["tests/jobs/train_killed.py"]
    # --resume on the first attempt too (nothing to resume yet): the restart reuses the command line.
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           "--max-restarts=1", "--monitor-interval=0.5", *entry, "--config", str(cfg), "--resume",
           f"train.output_dir={out}"]
    proc = subprocess.run(cmd, cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
    assert proc.returncode == 0, proc.stderr[-6000:]
    return proc


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    root = tmp_path_factory.mktemp("crash_resume")
    cfg = write_config(root / "c.yaml", TREE)
    out = {"reference": root / "reference"}
    _launch(cfg, out["reference"])
    for name, kill_at in (("mid_step", "8:step:1"), ("mid_save", "9:save:1")):
        out[name] = root / name
        marker = root / f"{name}.killed"
        proc = _launch(cfg, out[name], kill_at, marker)
        assert marker.exists(), f"{name}: the kill never happened\n{proc.stderr[-3000:]}"
        out[name + "_log"] = proc.stderr
    return out


def test_reference_crosses_an_epoch_boundary(runs):
    epochs = [r["epoch"] for r in train_records(runs["reference"]) if "loss" in r and "eval_loss" not in r]
    assert len(epochs) == 11 and epochs[PER_EPOCH - 1] == pytest.approx(1.0) and epochs[-1] > 1.0


@pytest.mark.parametrize("name", ["mid_step", "mid_save"])
def test_killed_rank_resumes_to_the_uninterrupted_weights(runs, name):
    ref, run = runs["reference"], runs[name]
    log = runs[name + "_log"]
    # The restart resumed from step 6 (epoch 0): the killed save of step 9 had no COMPLETE marker.
    assert "SIGKILL" in log and re.search(r"resumed from \S*step-000006 \(step 6,", log), log[-3000:]
    assert_same_run(ref, run, f"{name}, after the crash")
    assert [p.name for p in complete_checkpoints(run)] == ["step-000009", "step-000011"]
    assert not [p for p in (run / "checkpoints").iterdir() if p.is_dir() and not (p / "COMPLETE").exists()]
    state = json.loads((complete_checkpoints(run)[-1] / "trainer_state.json").read_text())
    assert state["step"] == 11 and state["world_size"] == 2
