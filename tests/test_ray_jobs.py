"""On one real Ray head (module-scoped: starting one costs ~15 s here):

* the Ray Data pipeline with 2 actors, its driver SIGKILLed mid-run and re-run, ends with exactly the
  bytes of an uninterrupted single-process run;
* end to end as a user runs it: ``ray job submit`` of the preprocess job, then the train job on 2 CPU
  workers (configs/tiny.yaml shrunk by overrides), ending SUCCEEDED with shards, manifest, checkpoints
  and an export;
* ``magdi-dist submit`` of the same training with one worker SIGKILLed after the first checkpoint:
  the job still succeeds, resumed, with the uninterrupted run's final weights."""

from __future__ import annotations

import json
import os
import re
import shutil
import signal
import subprocess
import sys
import time
from pathlib import Path

import pytest
from ray_cluster import RAY, ray_cluster, tiny_feature_spec, write_synth_inputs  # noqa: F401  (fixture)

from magdi_dist.preprocess.manifest import load_manifest, verify_manifest
from magdi_dist.preprocess.pipeline import run_preprocess
from magdi_dist.preprocess.settings import PreprocessSettings

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

# A Ray driver in its own process, as a job's would be: the test process never joins the cluster.
DRIVER = """
import json, sys
from magdi_dist.preprocess.session import ray_session
from magdi_dist.preprocess.featurize import FeatureSpec
from magdi_dist.preprocess.pipeline import run_preprocess
from magdi_dist.preprocess.settings import PreprocessSettings
args = json.loads(sys.argv[1])
with ray_session():
    run_preprocess(PreprocessSettings(**args["settings"]), FeatureSpec(**args["spec"]), engine="ray")
"""


@pytest.fixture(scope="module")
def pre_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rpre")
    spec = tiny_feature_spec(root)
    # Many small shards: the kill, sent as soon as the first shard exists, lands well before the end.
    write_synth_inputs(root / "in", {f"part{i}.jsonl": (12, 10 + i) for i in range(4)})
    return root, spec


N_SHARDS = 4 * 12 // 2


def pre_settings(root, out, **kw) -> PreprocessSettings:
    return PreprocessSettings(inputs=[str(root / "in" / "*.jsonl")], out_dir=str(out), records_per_shard=2, **kw)


@pytest.fixture(scope="module")
def pre_reference(pre_assets, tmp_path_factory):
    root, spec = pre_assets
    out = tmp_path_factory.mktemp("rref")
    run_preprocess(pre_settings(root, out), spec, engine="local", log=lambda _m: None)
    return out


def pipeline_driver(cluster, root, spec, out, **kw) -> subprocess.Popen:
    args = json.dumps({"settings": pre_settings(root, out, **kw).model_dump(), "spec": spec.model_dump()})
    return subprocess.Popen([sys.executable, "-c", DRIVER, args], env=cluster.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_pipeline_killed_mid_run_reruns_to_single_process_bytes(ray_cluster, pre_assets, pre_reference, tmp_path):  # noqa: F811
    """One kill-and-rerun covers both promises: a two-actor pool writes what one process writes, and
    a run SIGKILLed between two shards resumes to the uninterrupted run's bytes."""
    root, spec = pre_assets
    proc = pipeline_driver(ray_cluster, root, spec, tmp_path, concurrency=2)
    shards = tmp_path / "shards"
    deadline = time.monotonic() + 180
    while time.monotonic() < deadline and proc.poll() is None:
        if shards.is_dir() and any(p.suffix == ".parquet" for p in shards.iterdir()):
            break
        time.sleep(0.02)
    assert proc.poll() is None, "the run ended before it could be killed:\n" + proc.stdout.read()[-3000:]
    proc.send_signal(signal.SIGKILL)  # the driver: Ray then tears down its tasks and actors
    proc.wait(timeout=30)
    proc.stdout.close()
    assert not (tmp_path / "manifest.json").exists()
    done = {p.name: p.stat().st_ino for p in shards.iterdir() if p.suffix == ".parquet"}
    assert 0 < len(done) < N_SHARDS
    proc = pipeline_driver(ray_cluster, root, spec, tmp_path, concurrency=2)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-4000:]
    assert "MapBatches(ShardBuilder)" in out  # Ray Data's progress reporting reached the log
    assert (tmp_path / "manifest.json").read_bytes() == (pre_reference / "manifest.json").read_bytes()
    assert verify_manifest(tmp_path) == []
    assert load_manifest(tmp_path)["totals"]["shards"] == N_SHARDS
    # Shards finished before the kill were kept, not rebuilt (a late writer may have added more).
    assert all((shards / name).stat().st_ino == ino for name, ino in done.items())


def ray_job_submit(cluster, job: str, args: list[str], timeout: float = 300) -> tuple[bool, str]:
    """``ray job submit`` exactly as documented (it tails the logs and ends with the job); returns
    (succeeded, logs)."""
    cmd = [RAY, "job", "submit", "--address", cluster.dashboard_url, "--working-dir", ".",
           "--runtime-env", "ray_jobs/runtime_env.yaml", "--",
           "python", f"ray_jobs/{job}.py", "--config", CONFIG, *args]  # fmt: skip
    out = subprocess.run(cmd, cwd=REPO, env=cluster.env(), capture_output=True, text=True, timeout=timeout)
    logs = out.stdout + out.stderr
    return out.returncode == 0 and re.search(r"Job '\S+' succeeded", logs) is not None, logs


def export_tensors(run: Path) -> dict:
    from safetensors.torch import load_file

    return {p.name: load_file(p) for p in sorted((run / "export").rglob("*.safetensors"))}


@pytest.fixture(scope="module")
def trained(ray_cluster, tmp_path_factory):  # noqa: F811
    """Preprocess job, then train job, into one output dir (the uninterrupted reference run)."""
    run = tmp_path_factory.mktemp("job") / "run"
    overrides = [*SMALL, f"train.output_dir={run}"]
    ok, logs = ray_job_submit(ray_cluster, "preprocess", overrides)
    assert ok, logs[-5000:]
    assert "processed 1 new input(s)" in logs and "MapBatches(ShardBuilder)" in logs
    ok, logs = ray_job_submit(ray_cluster, "train", ["--workers", "2", *overrides])
    assert ok, logs[-5000:]
    return run, logs


def test_preprocess_then_train_jobs_succeed_with_all_outputs(trained):
    run, logs = trained
    assert "nothing to do" in logs  # the train job found the preprocess job's shards
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


def alive_worker_pids(cluster) -> list[int]:
    out = subprocess.run(
        [RAY, "list", "actors", "--address", cluster.gcs_address, "--format", "json",
         "--filter", "class_name=RayTrainWorker", "--filter", "state=ALIVE"],
        env=cluster.env(), capture_output=True, text=True, timeout=60,
    ).stdout  # fmt: skip
    return sorted(int(a["pid"]) for a in json.loads(out or "[]"))


def test_worker_killed_mid_run_job_finishes_with_uninterrupted_weights(ray_cluster, trained, tmp_path):  # noqa: F811
    reference, _ = trained
    run = tmp_path / "run"
    run.mkdir()
    for sub in ("shards", "tokenizer"):  # same data: the fault run must not differ in anything else
        shutil.copytree(reference / sub, run / sub)
    cmd = [sys.executable, "-m", "magdi_dist.cli", "submit", "--address", ray_cluster.dashboard_url,
           "--config", CONFIG, "--job", "train", "--env", "MAGDI_PAUSE_AFTER_FIRST_CHECKPOINT_S=60",
           "--", "--workers", "2", *SMALL, f"train.output_dir={run}"]  # fmt: skip
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
    assert "resuming" in logs and "SUCCEEDED" in logs
    got, want = export_tensors(run), export_tensors(reference)
    assert got.keys() == want.keys() and got
    for name in want:
        assert got[name].keys() == want[name].keys()
        for key, tensor in want[name].items():
            assert got[name][key].equal(tensor), f"{name}:{key} differs from the uninterrupted run"
