"""A Ray cluster with no shared disk (a head and worker nodes on this machine, each its own ``ray
start``, temp dir and scratch dir; nothing shared but a real S3 server): the README's jobs with
``--storage s3://...``, and the node holding a training worker SIGKILLed with its disk after the
first complete checkpoint, a fresh node joining, the job succeeding with the uninterrupted run's
weights bit for bit."""

from __future__ import annotations

import os
import re
import shutil
import signal
import subprocess
import time
from pathlib import Path

import pytest
from launchers import assert_same_run
from ray_cluster import RAY, start_cluster, start_worker_node, stop_cluster
from s3_server import objects, s3_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]
SMALL = [  # configs/tiny.yaml at test size (as in tests/test_ray_jobs.py)
    "model.base={hidden_size: 32, num_hidden_layers: 1, num_attention_heads: 2, intermediate_size: 64}",
    "model.gcn_hidden=16", "data.synthetic.n=40", "data.synthetic.rounds=2", "data.max_len=96",
    "data.vocab_size=300", "train.max_steps=6", "train.save_every=2", "train.micro_batch_size=2",
    "train.warmup_steps=0", "train.progress=false", "train.peak_flops=1e12",
]  # fmt: skip


def _submit(head, log: Path, entry: list[str], output_dir: str) -> subprocess.Popen:
    cmd = [RAY, "job", "submit", "--address", head.dashboard_url, "--working-dir", ".", "--runtime-env",
           "ray_jobs/runtime_env.yaml", "--", "python", *entry, "--config", "configs/tiny.yaml",
           "--storage", "s3://magdi/runs", *SMALL, f"train.output_dir={output_dir}"]
    with log.open("w") as fh:
        return subprocess.Popen(cmd, cwd=REPO, env=head.env(), stdout=fh, stderr=subprocess.STDOUT)


def _succeeded(proc: subprocess.Popen, log: Path, timeout: float = 600) -> str:
    code = proc.wait(timeout=timeout)
    text = log.read_text()
    assert code == 0 and re.search(r"Job '\S+' succeeded", text), text[-5000:]
    return text


def _download(env, prefix: str, to: Path) -> Path:
    for name, data in objects(env, "magdi", prefix).items():
        if "/export/" in name or name.endswith("metrics.jsonl"):
            target = to / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return to


def test_a_node_lost_mid_run_with_object_storage(tmp_path):
    before = set(os.listdir(REPO))
    with s3_server(tmp_path / "s3") as s3:
        def node_env(name: str) -> dict[str, str]:
            return {**s3, "MAGDI_SCRATCH": str(tmp_path / f"scratch-{name}")}

        # The head runs the drivers only (0 CPUs): each training worker gets a worker node of its own.
        head = start_cluster(num_cpus=0, env_extra=node_env("head"))
        nodes = []
        try:
            nodes = [start_worker_node(head, 1, node_env(n)) for n in ("a", "b")]
            # Preparation into the bucket, twice: the second leaves the manifest object as it was.
            manifest = "runs/fault/shards/manifest.json"
            for i in range(2):
                log = tmp_path / f"preprocess{i}.log"
                _succeeded(_submit(head, log, ["ray_jobs/preprocess.py"], "fault"), log)
                if i == 0:
                    first = objects(s3, "magdi", manifest)[manifest]
            assert objects(s3, "magdi", manifest)[manifest] == first

            # The reference: the same run, uninterrupted, also in the bucket.
            log = tmp_path / "ref.log"
            _succeeded(_submit(head, log, ["ray_jobs/train.py", "--workers", "2"], "ref"), log)

            log = tmp_path / "fault.log"
            proc = _submit(head, log, ["tests/jobs/train_pausing.py", "60", "--workers", "2"], "fault")
            try:
                complete = "runs/fault/checkpoints/step-000002/COMPLETE"
                deadline = time.monotonic() + 300
                while complete not in objects(s3, "magdi", "runs/fault/checkpoints/"):
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-5000:]
                    time.sleep(1)
                # The node is lost with everything on it: its raylet, its worker, its disk.
                lost = nodes.pop()
                os.killpg(lost.proc.pid, signal.SIGKILL)
                lost.proc.wait(timeout=60)
                shutil.rmtree(tmp_path / "scratch-b")
                nodes.append(start_worker_node(head, 1, node_env("c")))
                text = _succeeded(proc, log)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert "pausing 60.0s" in text and "resuming" in text
            stored = objects(s3, "magdi", "runs/fault/")
            assert "runs/fault/export/model.safetensors" in stored and "runs/fault/run.json" in stored
        finally:
            for node in nodes:
                stop_cluster(node)
            stop_cluster(head)
        assert_same_run(_download(s3, "runs/ref/", tmp_path / "ref"), _download(s3, "runs/fault/", tmp_path / "got"),
                        "node lost mid-run, resumed from the bucket")
    assert set(os.listdir(REPO)) == before  # nothing written outside the nodes' scratch, Ray and the bucket
