"""One run per output folder (launch/lock.py): a second driver is refused naming the holder; a lock
whose holder is gone is taken over with a message."""

from __future__ import annotations

import json
import os
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from launchers import REPO, SMALL, clean_env, write_config

from magdi_dist.launch.lock import LOCK_FILE, RunLocked, acquire, release, run_lock


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_a_live_holder_is_refused_and_a_gone_one_taken_over(tmp_path):
    with run_lock(tmp_path) as path:
        with pytest.raises(RunLocked, match=f"pid {os.getpid()} on "):
            acquire(tmp_path)
        assert json.loads(Path(path).read_text())["pid"] == os.getpid()
    assert not Path(path).exists()  # released

    lock = tmp_path / LOCK_FILE
    lock.write_text(json.dumps({"host": os.uname().nodename, "pid": _dead_pid(), "started": 1.0,
                                "since": "then", "command": "magdi-dist train (killed)"}))
    said: list[str] = []
    taken = acquire(tmp_path, said.append)
    assert json.loads(Path(taken).read_text())["pid"] == os.getpid()
    assert said and "taking over" in said[0] and "killed" in said[0]
    release(taken)

    lock.write_text(json.dumps({"host": "another-node", "pid": 1, "since": "then"}))  # cannot be checked
    with pytest.raises(RunLocked, match="another-node"):
        acquire(tmp_path)


@pytest.mark.slow
def test_two_train_commands_on_one_output_dir(tmp_path):
    out = tmp_path / "run"
    cfg = write_config(tmp_path / "c.yaml", {**SMALL, "train": {**SMALL["train"], "max_steps": 3000,
                                                                 "save_every": 50, "output_dir": str(out)}})
    train = [sys.executable, "-m", "magdi_dist.cli", "train", "--config", str(cfg)]
    env = {**clean_env(), "OMP_NUM_THREADS": "1"}
    first = subprocess.Popen(train, cwd=REPO, env=env, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE, text=True)
    try:
        deadline = time.time() + 240
        while not (out / "checkpoints").is_dir():  # the first run is training (its lock taken long before)
            assert first.poll() is None and time.time() < deadline, first.stderr.read()[-3000:]
            time.sleep(0.5)
        # The same run resubmitted, and a different one told to start over: neither touches the folder.
        for extra in ([], ["--no-resume", "train.lr=0.01"]):
            second = subprocess.run([*train, *extra], cwd=REPO, env=env, capture_output=True, text=True, timeout=300)
            assert second.returncode == 2, second.stderr[-3000:]
            assert f"is in use by another run: pid {first.pid}" in second.stderr
            assert (out / "checkpoints").is_dir()
        # A driver SIGKILLed mid-run leaves its lock; the next run takes it over and resumes.
        os.kill(first.pid, signal.SIGKILL)
        first.wait(timeout=60)
    finally:
        if first.poll() is None:
            first.kill()
            first.wait()
    third = subprocess.run([*train, "train.stop_after=1"], cwd=REPO, env=env, capture_output=True, text=True,
                           timeout=300)
    assert third.returncode == 0, third.stderr[-3000:]
    assert f"lock: taking over {out / LOCK_FILE} from a run that is gone (pid {first.pid}" in third.stdout
    assert not (out / LOCK_FILE).exists()
