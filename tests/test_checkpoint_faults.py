"""Checkpoints that prove themselves (train/checkpoint.py, launch/resolve.py) and a run that stops
when its loss diverges, with real DeepSpeed files damaged on disk and real ``magdi-dist train``
processes.

The six trainings are independent but for one base run, and each is one single-threaded process
dominated by its start-up, so they run side by side (the suite's machine has 2 cores): the base run
with the diverging one, then the four runs on damaged copies or small disks at once. Each test then
reads its run's outcome."""

from __future__ import annotations

import json
import shutil
import subprocess
import sys
from pathlib import Path

import pytest
from launchers import REPO, SMALL, clean_env, write_config

from magdi_dist.train.checkpoint import MARKER, complete_checkpoints, verify

pytestmark = pytest.mark.slow


def _start(cfg: Path, logs: Path, *overrides: str) -> subprocess.Popen:
    """``magdi-dist train`` in the background, stdout and stderr into files beside ``logs`` (pipes
    left unread while another run is waited for would fill and stall it)."""
    out, err = logs.with_suffix(".out").open("w"), logs.with_suffix(".err").open("w")
    with out, err:
        return subprocess.Popen([sys.executable, "-m", "magdi_dist.cli", "train", "--config", str(cfg), *overrides],
                                cwd=REPO, env={**clean_env(), "OMP_NUM_THREADS": "1"}, stdout=out, stderr=err,
                                text=True)


def _stop(procs) -> None:
    for proc in procs:
        if proc.poll() is None:
            proc.kill()
            proc.wait()


def _wait(proc: subprocess.Popen, logs: Path) -> subprocess.CompletedProcess:
    try:
        proc.wait(timeout=900)
    finally:
        _stop([proc])
    return subprocess.CompletedProcess(proc.args, proc.returncode, logs.with_suffix(".out").read_text(),
                                       logs.with_suffix(".err").read_text())


def _config(path: Path, out: Path, **train) -> Path:
    return write_config(path, {**SMALL, "train": {**SMALL["train"], "save_every": 2, "log_every": 1,
                                                  "output_dir": str(out), **train}})


def _model_states(ckpt):
    (states,) = ckpt.rglob("mp_rank_00_model_states.pt")
    return states


def _du(path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def _mount_tmpfs(mount: Path, size: int) -> str | None:
    """A real small filesystem at ``mount`` (needs root); why not, when it cannot be mounted."""
    mount.mkdir()
    done = subprocess.run(["mount", "-t", "tmpfs", "-o", f"size={size}", "tmpfs", str(mount)],
                          capture_output=True, text=True)
    return None if done.returncode == 0 else f"cannot mount a tmpfs here: {done.stderr.strip()}"


@pytest.fixture(scope="module")
def runs(tmp_path_factory):
    """Every run of the module, with what was done to its files before it started."""
    root = tmp_path_factory.mktemp("faults")
    base, diverged = root / "base", root / "diverged"
    # Round 1: a run stopped after step 4 with complete checkpoints at steps 2 and 4; beside it, a run
    # whose loss diverges.
    first = {"base": _start(_config(root / "base.yaml", base), root / "base", "train.stop_after=4"),
             "diverged": _start(_config(root / "diverged.yaml", diverged, lr=1e30, warmup_steps=0),
                                root / "diverged")}
    try:
        done = {name: _wait(proc, root / name) for name, proc in first.items()}
    finally:
        _stop(first.values())
    assert done["base"].returncode == 0, done["base"].stderr[-3000:]
    assert [p.name for p in complete_checkpoints(base)] == ["step-000002", "step-000004"]
    found = {"diverged": {"proc": done["diverged"], "out": diverged}}

    # Round 2: four runs, each on its own copy of the base run or on a disk too small for it.
    ckpt = _du(base / "checkpoints" / "step-000002")
    rest = _du(base) - _du(base / "checkpoints")  # the shards and logs: what a run writes besides checkpoints
    second: dict[str, subprocess.Popen] = {}
    mounts = []
    try:
        for name in ("bit_flip", "no_intact"):
            out = root / name
            shutil.copytree(base, out)
            found[name] = {"out": out, "cfg": _config(root / f"{name}.yaml", out)}
            if name == "bit_flip":
                newest = out / "checkpoints" / "step-000004"
                states = _model_states(newest)
                found[name].update(marker=json.loads((newest / MARKER).read_text()), intact=verify(newest),
                                   states=states)
                data = bytearray(states.read_bytes())
                data[len(data) // 2] ^= 0xFF  # one flipped byte inside a tensor: the file still loads
                states.write_bytes(bytes(data))
                found[name].update(sizes_only=verify(newest, hashes=False), hashed=verify(newest))
            else:
                for c in complete_checkpoints(out):
                    states = _model_states(c)
                    states.write_bytes(states.read_bytes()[:1000])  # truncated
            second[name] = _start(found[name]["cfg"], root / name)
        # Room for everything but half a checkpoint: the first save runs out of space while writing.
        # Room for one checkpoint and a half: the second save cannot fit and is refused before writing.
        for name, size in (("full_disk", rest + ckpt // 2), ("cannot_fit", rest + ckpt + ckpt // 2)):
            disk = root / f"disk_{name}"
            skip = _mount_tmpfs(disk, size)
            found[name] = {"skip": skip, "out": disk / "run"}
            if skip is None:
                mounts.append(disk)
                second[name] = _start(_config(root / f"{name}.yaml", base), root / name,
                                      f"train.output_dir={disk / 'run'}")
        for name, proc in second.items():
            found[name]["proc"] = _wait(proc, root / name)
        yield found
    finally:
        _stop(second.values())
        for disk in mounts:
            subprocess.run(["umount", str(disk)], capture_output=True)


def test_a_bit_flip_is_caught_and_the_previous_checkpoint_taken(runs):
    run = runs["bit_flip"]
    out, newest = run["out"], run["out"] / "checkpoints" / "step-000004"
    assert run["marker"]["step"] == 4 and any(name.endswith("model_states.pt") for name in run["marker"]["files"])
    assert run["intact"] == []
    assert run["sizes_only"] == [] and "sha256" in run["hashed"][0]  # only the hash sees the flipped byte

    proc, states = run["proc"], run["states"]
    assert proc.returncode == 0, proc.stderr[-3000:]
    said = proc.stdout + proc.stderr
    assert f"checkpoint {newest} is corrupt" in said and str(states) in said
    assert "resumed from" in said and "step-000002" in said.split("resumed from", 1)[1].splitlines()[0]
    assert (out / "checkpoints" / "step-000004.corrupt" / "CORRUPT.txt").is_file()
    assert [p.name for p in complete_checkpoints(out)][-1] == "step-000006"
    assert (out / "export" / "model.safetensors").is_file()


def test_no_intact_checkpoint_left_stops_with_exit_2(runs):
    proc, out = runs["no_intact"]["proc"], runs["no_intact"]["out"]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "every complete checkpoint" in proc.stderr and "failed verification" in proc.stderr
    assert "bytes, " in proc.stdout and "were written" in proc.stdout  # each file named, with its sizes
    assert "Traceback" not in proc.stderr
    assert not (out / "export").exists()


def _disk_run(runs, name):
    if runs[name]["skip"]:
        pytest.skip(runs[name]["skip"])
    return runs[name]["proc"], runs[name]["out"]


def test_a_full_disk_is_named_and_leaves_no_partial_checkpoint(runs):
    proc, run = _disk_run(runs, "full_disk")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"no space left on {run / 'checkpoints'} while writing checkpoint step-000002" in proc.stderr
    assert "the partial checkpoint was removed" in proc.stderr and "Traceback" not in proc.stderr
    assert not (run / "checkpoints" / "step-000002").exists() and complete_checkpoints(run) == []


def test_a_save_that_cannot_fit_is_refused_before_writing(runs):
    proc, run = _disk_run(runs, "cannot_fit")
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert f"no space left on {run / 'checkpoints'} for checkpoint step-000004: need ~" in proc.stderr
    assert "(the size of step-000002)" in proc.stderr
    assert [p.name for p in complete_checkpoints(run)] == ["step-000002"]  # intact, resumable


def test_a_diverging_loss_stops_the_run_before_a_checkpoint_or_export(runs):
    proc, out = runs["diverged"]["proc"], runs["diverged"]["out"]
    assert proc.returncode == 2, proc.stderr[-3000:]
    assert "loss = nan" in proc.stderr.replace("inf", "nan") and "Traceback" not in proc.stderr
    assert not (out / "export").exists() and complete_checkpoints(out) == []
    last = json.loads((out / "metrics.jsonl").read_text().splitlines()[-1])
    assert last["loss"] != last["loss"] or abs(last["loss"]) == float("inf")  # the diverged step is recorded
