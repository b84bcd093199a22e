"""On one real Ray head (module-scoped: starting one costs ~15 s here), as a user runs it:

* the README's cluster commands, run as written (token auth through ``RAY_AUTH_MODE=token`` and
  ``~/.ray/auth_token``, the storage root ``$HOME/magdi-runs``) with test-size overrides appended:
  the preprocess job, the train job on 2 workers, the preprocess job again. Outputs land under the
  storage root, never under Ray's session folder, and the manifest stays byte-identical;
* the torchrun path (``magdi-dist train --nproc-per-node 2``) on the same config trains on the same
  rows, holds out the same questions and gives the same losses as the Ray Train job;
* a train job with one worker SIGKILLed after the first checkpoint still succeeds, resumed, with the
  uninterrupted run's final weights."""

from __future__ import annotations

import json
import os
import re
import shlex
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_cluster import RAY, ray_cluster  # noqa: F401  (fixture)

pytestmark = pytest.mark.slow

REPO = Path(__file__).resolve().parents[1]
CONFIG = "configs/tiny.yaml"
# configs/tiny.yaml at test size: a 1-layer 32-wide student, 40 questions, 6 steps, a checkpoint every 2.
SMALL = [
    "model.base={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
    "model.gcn_hidden=16", "data.synthetic.n=40", "data.synthetic.rounds=2", "data.max_len=96",
    "data.vocab_size=300", "train.max_steps=6", "train.save_every=2", "train.micro_batch_size=2",
    "train.warmup_steps=0", "train.progress=false", "train.peak_flops=1e12",
]  # fmt: skip


def readme_cluster_commands() -> list[str]:
    """The README's "On a Ray cluster" block, one command per line (continuations joined)."""
    text = (REPO / "README.md").read_text()
    section = text[text.index("## On a Ray cluster"):]
    start = section.index("```bash\n") + len("```bash\n")
    block = section[start: section.index("\n```", start)]
    return [line.strip() for line in block.replace("\\\n", " ").splitlines() if line.strip()]


def run_readme_command(cluster, command: str, home: Path, timeout: float = 300) -> tuple[bool, str]:
    """One README command in bash, after the README's own exports, with HOME a temp dir holding this
    cluster's token where ``ray start --head`` puts it. The only edits: the default address becomes
    this cluster's (its ports are free ones) and job commands get the test-size overrides."""
    commands = readme_cluster_commands()
    exports = [c.replace("127.0.0.1:8265", cluster.dashboard_url.removeprefix("http://"))
               for c in commands if c.startswith("export ")]
    if command.startswith("ray job submit"):
        command += " " + shlex.join(SMALL)
    env = {k: v for k, v in cluster.env().items() if k not in ("RAY_ADDRESS", "RAY_AUTH_MODE", "RAY_AUTH_TOKEN_PATH")}
    env["HOME"] = str(home)
    # As in a shell with the venv active: ``ray`` is this venv's (a shim, like cluster.env's python).
    env["PATH"] = os.pathsep.join([str(home / "bin"), env["PATH"]])
    script = "\n".join(["set -e", *exports, command])
    out = subprocess.run(["bash", "-c", script], cwd=REPO, env=env, capture_output=True, text=True, timeout=timeout)
    logs = out.stdout + out.stderr
    return out.returncode == 0 and re.search(r"Job '\S+' succeeded", logs) is not None, logs


def export_tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return {p.name: load_file(p) for p in sorted((run / "export").rglob("*.safetensors"))}


def losses(run: Path) -> list[float]:
    recs = [json.loads(line) for line in (run / "metrics.jsonl").read_text().splitlines() if line]
    return [r["loss"] for r in recs if "loss" in r and "eval_loss" not in r]


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):  # noqa: F811
    """The README's commands: preprocess job, train job, preprocess job again (the reference run)."""
    home = tmp_path_factory.mktemp("home")
    (home / ".ray").mkdir()
    shutil.copy(ray_cluster.temp_dir / "auth_token", home / ".ray" / "auth_token")
    (home / "bin").mkdir()
    (home / "bin" / "ray").write_text(f'#!/bin/sh\nexec "{RAY}" "$@"\n')
    (home / "bin" / "ray").chmod(0o755)
    commands = readme_cluster_commands()
    assert commands[0] == "ray start --head"  # the test's cluster stands in for it (free ports)
    jobs = [c for c in commands if c.startswith("ray job submit")]
    assert [("preprocess.py" in c, "train.py" in c) for c in jobs] == [(True, False), (False, True)]
    logs = []
    for command in [*jobs, jobs[0]]:
        ok, out = run_readme_command(ray_cluster, command, home)
        assert ok, out[-5000:]
        logs.append(out)
        if len(logs) == 1:
            first_manifest = (home / "magdi-runs" / "runs" / "tiny" / "shards" / "manifest.json").read_bytes()
    return home / "magdi-runs" / "runs" / "tiny", logs, first_manifest


def test_readme_jobs_write_durable_outputs_and_one_manifest(trained, ray_cluster):  # noqa: F811
    run, (pre, train, pre_again), first_manifest = trained
    assert "processed 1 new input(s)" in pre and "MapBatches(ShardBuilder)" in pre
    assert f"outputs: {run}" in train and "nothing to do" in train  # train found the preprocess job's shards
    assert "nothing to do" in pre_again and "manifest unchanged" in pre_again
    assert (run / "shards" / "manifest.json").read_bytes() == first_manifest
    # Nothing under Ray's session folder (where the jobs' working-dir copies live).
    assert not list(ray_cluster.temp_dir.rglob("manifest.json")) and not list(ray_cluster.temp_dir.rglob("step-*"))


def test_train_job_outputs(trained):
    run, (_, logs, _), _ = trained
    manifest = json.loads((run / "shards" / "manifest.json").read_text())
    assert manifest["totals"]["mags"] == 40 and manifest["totals"]["rows"] > 0
    assert all((run / "shards" / s["file"]).is_file() for s in manifest["shards"])
    assert "rank 0/2" in logs and "rank 1/2" in logs
    final = run / "checkpoints" / "step-000006"
    assert (final / "COMPLETE").is_file() and (final / "trainer_state.json").is_file()
    # Every rank's files are kept (DeepSpeed ZeRO optimizer shards and RNG state per rank).
    assert {p.name for p in final.glob("rng_state_rank*.pt")} == {"rng_state_rank0.pt", "rng_state_rank1.pt"}
    assert len(list(final.rglob("*optim_states.pt"))) == 2
    # Ray Train registered our checkpoint directories in place (no copy under Ray's own names).
    snapshot = json.loads((run / "checkpoint_manager_snapshot.json").read_text())
    assert snapshot["latest_checkpoint_result"]["checkpoint_dir_name"] == "checkpoints/step-000006"
    assert export_tensors(run) and (run / "export" / "config.json").is_file()


def test_torchrun_path_trains_on_the_same_rows_and_split(trained, tmp_path):
    """Same config, the other launcher: same manifest bytes (its paths are relative to itself), so the
    same rows and held-out questions, and the same loss curve and eval loss."""
    ray_run, _, _ = trained
    run = tmp_path / "torchrun"
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    proc = subprocess.run([sys.executable, "-m", "magdi_dist.cli", "train", "--config", CONFIG,
                           "--nproc-per-node", "2", *SMALL, f"train.output_dir={run}"],
                          cwd=REPO, env=env, capture_output=True, text=True, timeout=420)  # fmt: skip
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    assert (run / "shards" / "manifest.json").read_bytes() == (ray_run / "shards" / "manifest.json").read_bytes()
    split = json.loads((run / "shards" / "manifest.json").read_text())["split"]
    assert 0 < split["heldout_questions"] < split["questions"] == 40
    assert losses(run) == pytest.approx(losses(ray_run), rel=1e-5)
    evals = [[json.loads(x) for x in (r / "metrics.jsonl").read_text().splitlines() if "eval_loss" in x]
             for r in (run, ray_run)]
    assert evals[0] and evals[0][-1]["eval_loss"] == pytest.approx(evals[1][-1]["eval_loss"], rel=1e-5)


def alive_worker_pids(cluster) -> list[int]:
    out = subprocess.run(
        [RAY, "list", "actors", "--address", cluster.gcs_address, "--format", "json",
         "--filter", "class_name=RayTrainWorker", "--filter", "state=ALIVE"],
        env=cluster.env(), capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return sorted(int(a["pid"]) for a in json.loads(out or "[]"))


def test_worker_killed_mid_run_job_finishes_with_uninterrupted_weights(ray_cluster, trained, tmp_path):  # noqa: F811
    reference, _, _ = trained
    run = tmp_path / "run"
    run.mkdir()
    shutil.copytree(reference / "shards", run / "shards")  # same data: the fault run differs in nothing else
    cmd = [RAY, "job", "submit", "--address", ray_cluster.dashboard_url, "--working-dir", ".",
           "--runtime-env", "ray_jobs/runtime_env.yaml", "--", "python", "tests/jobs/train_pausing.py", "60",
           "--config", CONFIG, "--workers", "2", *SMALL, f"train.output_dir={run}"]  # fmt: skip
    log = tmp_path / "submit.log"
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, cwd=REPO, env=ray_cluster.env(), stdout=fh, stderr=subprocess.STDOUT)
    try:
        first = run / "checkpoints" / "step-000002" / "COMPLETE"
        deadline = time.monotonic() + 240
        while not first.exists() and proc.poll() is None and time.monotonic() < deadline:
            time.sleep(0.2)
        assert first.exists(), log.read_text()[-5000:]
        pids = alive_worker_pids(ray_cluster)
        assert len(pids) == 2, pids
        os.kill(pids[-1], signal.SIGKILL)  # one training worker, by pid, while it waits after step 2
        assert proc.wait(timeout=300) == 0, log.read_text()[-5000:]
    finally:
        if proc.poll() is None:
            proc.kill()
    logs = log.read_text()
    assert "pausing 60.0s" in logs and "resuming" in logs and re.search(r"Job '\S+' succeeded", logs)
    got, want = export_tensors(run), export_tensors(reference)
    assert got.keys() == want.keys() and got
    for name in want:
        assert got[name].keys() == want[name].keys()
        for key, tensor in want[name].items():
            assert got[name][key].equal(tensor), f"{name}:{key} differs from the uninterrupted run"
