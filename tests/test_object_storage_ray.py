"""A Ray cluster with no shared disk (a head and worker nodes on this machine, each its own ``ray
start``, temp dir and scratch dir; nothing shared but a real S3 server): the README's jobs with
``--storage s3://...``, and the node holding rank 1 SIGKILLed with its disk after the first complete
checkpoint, a fresh node joining, the job succeeding with the uninterrupted run's weights bit for bit
(the same config on 2 torchrun ranks, s3_server.reference_run); the fresh node downloaded one rank's
ZeRO shard, not every rank's."""

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
from s3_server import SMALL, objects, reference_run, s3_server

pytestmark = pytest.mark.slow
REPO = Path(__file__).resolve().parents[1]


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


def _scratch_of(pid: int) -> str:
    """The scratch dir of the node running ``pid``: every process a node starts inherits its env."""
    env = Path(f"/proc/{pid}/environ").read_bytes().split(b"\0")
    return next(e.split(b"=", 1)[1].decode() for e in env if e.startswith(b"MAGDI_SCRATCH="))


def _download(env, prefix: str, to: Path) -> Path:
    for name, data in objects(env, "magdi", prefix).items():
        if "/export/" in name or name.endswith("metrics.jsonl"):
            target = to / name[len(prefix):]
            target.parent.mkdir(parents=True, exist_ok=True)
            target.write_bytes(data)
    return to


def test_a_node_lost_mid_run_with_object_storage(tmp_path, tmp_path_factory):
    reference = reference_run(tmp_path_factory)  # before the cluster: the uninterrupted run (2 torchrun ranks)
    before = set(os.listdir(REPO))
    with s3_server(tmp_path / "s3") as s3:
        def node_env(name: str) -> dict[str, str]:
            return {**s3, "MAGDI_SCRATCH": str(tmp_path / f"scratch-{name}")}

        # The head runs the drivers only (0 CPUs): each training worker gets a worker node of its own.
        head = start_cluster(num_cpus=0, env_extra=node_env("head"))
        joined: dict = {}  # every node started, for the teardown whatever happens
        try:
            for n in ("a", "b"):  # one after the other: each start waits for the count of live nodes to grow
                joined[n] = start_worker_node(head, 1, node_env(n))
            nodes = dict(joined)
            # Preparation into the bucket, twice: the second leaves the manifest object as it was.
            manifest = "runs/fault/shards/manifest.json"
            for i in range(2):
                log = tmp_path / f"preprocess{i}.log"
                _succeeded(_submit(head, log, ["ray_jobs/preprocess.py"], "fault"), log)
                if i == 0:
                    first = objects(s3, "magdi", manifest)[manifest]
            assert objects(s3, "magdi", manifest)[manifest] == first
            # Ray Data's feature actors ran on the worker nodes (the head has no CPU) and wrote the
            # shards into their own scratch, and from there into the bucket (launch/stage.preparation).
            made = {p.name for n in ("a", "b") for p in (tmp_path / f"scratch-{n}").rglob("*.parquet")}
            stored_shards = {k.rsplit("/", 1)[1] for k in objects(s3, "magdi", "runs/fault/shards/shards/")}
            assert made and made == stored_shards, (made, stored_shards)
            assert "on this node's disk only" not in log.read_text()

            log = tmp_path / "fault.log"
            proc = _submit(head, log, ["tests/jobs/train_pausing.py", "60", "--workers", "2"], "fault")
            try:
                complete = "runs/fault/checkpoints/step-000002/COMPLETE"
                deadline = time.monotonic() + 300
                while complete not in objects(s3, "magdi", "runs/fault/checkpoints/") or \
                        not re.search(r"\[launch\] rank 1/2 pid \d+", log.read_text()):
                    assert proc.poll() is None and time.monotonic() < deadline, log.read_text()[-5000:]
                    time.sleep(1)
                # The node holding rank 1 is lost with everything on it: its raylet, its worker, its disk.
                pid = int(re.search(r"\[launch\] rank 1/2 pid (\d+)", log.read_text()).group(1))
                name = Path(_scratch_of(pid)).name.removeprefix("scratch-")
                lost = nodes.pop(name)
                os.killpg(lost.proc.pid, signal.SIGKILL)
                lost.proc.wait(timeout=60)
                shutil.rmtree(tmp_path / f"scratch-{name}")
                nodes["c"] = joined["c"] = start_worker_node(head, 1, node_env("c"))
                text = _succeeded(proc, log)
            finally:
                if proc.poll() is None:
                    proc.kill()
            assert "pausing 60.0s" in text and "resuming" in text
            stored = objects(s3, "magdi", "runs/fault/")
            assert "runs/fault/export/model.safetensors" in stored and "runs/fault/run.json" in stored
            # The fresh node pulled the checkpoint its rank resumed from, and of the ZeRO shards only its own.
            pulled = [f.name for c in (tmp_path / "scratch-c").rglob("step-000002") for f in c.iterdir()]
            shards = {m.group(1) for f in pulled if (m := re.search(r"zero_pp_rank_(\d+)_", f))}
            assert "COMPLETE" in pulled and len(shards) == 1, pulled
        finally:
            for node in joined.values():  # the lost one too (its processes are gone; its temp dir is not)
                stop_cluster(node)
            stop_cluster(head)
        got = _download(s3, "runs/fault/", tmp_path / "got")
    assert_same_run(reference, got, "node lost mid-run, resumed from the bucket, vs uninterrupted")
    assert set(os.listdir(REPO)) == before  # nothing written outside the nodes' scratch, Ray and the bucket
