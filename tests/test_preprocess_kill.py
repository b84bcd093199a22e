"""On one real Ray head: the Ray Data preprocessing pipeline with 2 actors, its driver SIGKILLed right
after the first input's completion record and then re-run, ends with exactly the bytes of an
uninterrupted single-process run.

The kill is deterministic, not timed: the driver's ``log`` callback kills its own process on the first
"[k/n] path: ..." line, which ``run_preprocess`` logs right after that input's ``units/<key>.json``
is written. At that moment exactly one completion record exists and no manifest does, whatever the
actors were doing; shards of the other inputs may or may not be on disk (the actors run on until Ray
tears the dead driver's job down), so nothing is asserted about them until the re-run."""

from __future__ import annotations

import json
import signal
import subprocess
import sys

import pytest
from ray_cluster import ray_cluster, tiny_feature_spec, write_synth_inputs  # noqa: F401  (fixture)

from magdi_dist.config import PreprocessConfig
from magdi_dist.preprocess.manifest import load_manifest, verify_manifest
from magdi_dist.preprocess.pipeline import run_preprocess

pytestmark = pytest.mark.slow

N_INPUTS = 4  # several inputs, so the first one to complete is never the last
N_SHARDS = N_INPUTS * 12 // 2

# A Ray driver in its own process, as a job's would be: the test process never joins the cluster. Its
# log kills it (SIGKILL, no cleanup of any kind) on the first per-input completion line.
DRIVER = """
import json, os, signal, sys
from magdi_dist.preprocess.session import ray_session
from magdi_dist.preprocess.featurize import FeatureSpec
from magdi_dist.preprocess.pipeline import run_preprocess
from magdi_dist.config import PreprocessConfig
args = json.loads(sys.argv[1])

def log(msg):
    print(msg, flush=True)
    if args["kill_after_first_unit"] and msg.lstrip().startswith("[1/"):
        os.kill(os.getpid(), signal.SIGKILL)

with ray_session():
    run_preprocess(PreprocessConfig(**args["settings"]), FeatureSpec(**args["spec"]), engine="ray", log=log)
"""


@pytest.fixture(scope="module")
def pre_assets(tmp_path_factory):
    root = tmp_path_factory.mktemp("rpre")
    spec = tiny_feature_spec(root)
    write_synth_inputs(root / "in", {f"part{i}.jsonl": (12, 10 + i) for i in range(N_INPUTS)})
    return root, spec


def pre_settings(root, out, **kw) -> PreprocessConfig:
    return PreprocessConfig(inputs=[str(root / "in" / "*.jsonl")], out_dir=str(out), records_per_shard=2, **kw)


@pytest.fixture(scope="module")
def pre_reference(pre_assets, tmp_path_factory):
    root, spec = pre_assets
    out = tmp_path_factory.mktemp("rref")
    run_preprocess(pre_settings(root, out), spec, engine="local", log=lambda _m: None)
    return out


def pipeline_driver(cluster, root, spec, out, *, kill_after_first_unit=False, **kw) -> subprocess.Popen:
    args = json.dumps({"settings": pre_settings(root, out, **kw).model_dump(), "spec": spec.model_dump(),
                       "kill_after_first_unit": kill_after_first_unit})
    return subprocess.Popen([sys.executable, "-c", DRIVER, args], env=cluster.env(), stdout=subprocess.PIPE,
                            stderr=subprocess.STDOUT, text=True)


def test_pipeline_killed_mid_run_reruns_to_single_process_bytes(ray_cluster, pre_assets, pre_reference, tmp_path):  # noqa: F811
    """One kill-and-rerun covers both promises: a two-actor pool writes what one process writes, and
    a run SIGKILLed between two inputs resumes to the uninterrupted run's bytes."""
    root, spec = pre_assets
    proc = pipeline_driver(ray_cluster, root, spec, tmp_path, concurrency=2, kill_after_first_unit=True)
    out, _ = proc.communicate(timeout=240)
    # Killed by its own log on the first completion line (not crashed, not finished).
    assert proc.returncode == -signal.SIGKILL, out[-4000:]
    assert f"[1/{N_INPUTS}]" in out and f"[2/{N_INPUTS}]" not in out, out[-4000:]
    assert not (tmp_path / "manifest.json").exists()
    units = list((tmp_path / "units").iterdir())
    assert len(units) == 1, units
    record = json.loads(units[0].read_text())
    shards = tmp_path / "shards"
    names = [s["name"] for s in record["shards"]]
    assert len(names) == 12 // 2
    assert all((shards / s["name"]).stat().st_size == s["bytes"] for s in record["shards"])
    kept = {name: (shards / name).stat().st_ino for name in names}
    record_ino = units[0].stat().st_ino

    proc = pipeline_driver(ray_cluster, root, spec, tmp_path, concurrency=2)
    out, _ = proc.communicate(timeout=240)
    assert proc.returncode == 0, out[-4000:]
    assert f"{N_INPUTS - 1} of {N_INPUTS} input(s) need work" in out, out[-4000:]
    assert "MapBatches(ShardBuilder)" in out  # Ray Data's progress reporting reached the log
    assert (tmp_path / "manifest.json").read_bytes() == (pre_reference / "manifest.json").read_bytes()
    assert verify_manifest(tmp_path) == []
    assert load_manifest(tmp_path)["totals"]["shards"] == N_SHARDS
    # The input completed before the kill was skipped: its shards and its record kept, not rebuilt.
    assert {name: (shards / name).stat().st_ino for name in names} == kept
    assert units[0].stat().st_ino == record_ino
