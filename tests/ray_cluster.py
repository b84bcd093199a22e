"""A real, private Ray head for tests: ``ray start --head --block`` on free ports with a short temp dir,
stopped by the pid (and process group) of the process that started it.

Never ``ray stop``: it kills every Ray on the machine, other people's test clusters included. Every
port is chosen free (the defaults -- 6379, 8265, 10001, 52365 -- would collide with a second cluster
on the same host), and the temp dir is short because Ray puts unix sockets under it (108-byte limit).
"""

from __future__ import annotations

import contextlib
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

from magdi_dist.train.dist import free_port  # the one copy (benchmarks/serving.py uses it too)

RAY = str(Path(sys.executable).with_name("ray"))


@dataclass
class RayCluster:
    proc: subprocess.Popen
    temp_dir: Path
    gcs_address: str
    dashboard_url: str
    log: Path

    @property
    def auth(self) -> dict[str, str]:
        """Ray 2.60 turns token auth on by default; this cluster has its own token, which every client
        (driver, ``ray job submit``, JobSubmissionClient) must present."""
        return {"RAY_AUTH_MODE": "token", "RAY_AUTH_TOKEN_PATH": str(self.temp_dir / "auth_token")}

    def env(self, **extra: str) -> dict[str, str]:
        """Environment for a subprocess (driver or ``ray job submit``) that should use this cluster."""
        env = base_env(self.temp_dir)
        env.update(RAY_ADDRESS=self.gcs_address, RAY_USAGE_STATS_ENABLED="0", **self.auth, **extra)
        return env


def base_env(temp_dir: Path) -> dict[str, str]:
    """This environment without any RAY_* setting, where ``python`` is this test's interpreter: a job's
    ``python ray_jobs/...`` entrypoint must find torch and magdi_dist even when the venv is not active.

    Only ``python`` is put first on PATH (a wrapper script), not the venv's whole bin/: its ``ninja``
    differs from the system's, and DeepSpeed's JIT-built ops then rebuild (40 s+) every time a process
    with the other ninja loads them.
    """
    shim = temp_dir / "bin"
    if not (shim / "python").exists():
        shim.mkdir(parents=True, exist_ok=True)
        (shim / "python").write_text(f'#!/bin/sh\nexec "{sys.executable}" "$@"\n')
        (shim / "python").chmod(0o755)
    env = {k: v for k, v in os.environ.items() if not k.startswith("RAY_")}
    env["PATH"] = os.pathsep.join([str(shim), env.get("PATH", "")])
    return env


def start_cluster(num_cpus: int = 4, object_store_bytes: int = 200 * 1024**2, timeout: float = 120,
                  env_extra: dict[str, str] | None = None) -> RayCluster:
    temp_dir = Path(tempfile.mkdtemp(prefix="rt", dir="/tmp"))
    gcs, dash = free_port(), free_port()
    log = temp_dir / "ray-start.log"
    cmd = [
        RAY, "start", "--head", "--block", "--disable-usage-stats",
        "--temp-dir", str(temp_dir), "--num-cpus", str(num_cpus), "--num-gpus", "0",
        "--object-store-memory", str(object_store_bytes),
        "--node-ip-address", "127.0.0.1", "--port", str(gcs),
        "--include-dashboard", "true", "--dashboard-host", "127.0.0.1", "--dashboard-port", str(dash),
        "--ray-client-server-port", str(free_port()), "--dashboard-agent-listen-port", str(free_port()),
        "--dashboard-agent-grpc-port", str(free_port()), "--runtime-env-agent-port", str(free_port()),
        "--metrics-export-port", str(free_port()), "--node-manager-port", str(free_port()),
        "--object-manager-port", str(free_port()),
    ]  # fmt: skip
    (temp_dir / "auth_token").write_text(secrets.token_hex(32))
    env = base_env(temp_dir)
    env.update(RAY_USAGE_STATS_ENABLED="0", RAY_AUTH_MODE="token", RAY_AUTH_TOKEN_PATH=str(temp_dir / "auth_token"),
               RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0", **(env_extra or {}))  # nothing to drain; stop at once
    with log.open("w") as fh:
        # Own session (process group): teardown can reach every process this head spawned, and nothing else.
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    cluster = RayCluster(proc, temp_dir, f"127.0.0.1:{gcs}", f"http://127.0.0.1:{dash}", log)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            tail = log.read_text()[-3000:]
            stop_cluster(cluster)
            raise RuntimeError(f"ray start exited with {proc.returncode}:\n{tail}")
        try:  # the job API is the last thing up; once it answers, jobs can be submitted
            with urllib.request.urlopen(f"{cluster.dashboard_url}/api/version", timeout=2):
                return cluster
        except urllib.error.HTTPError:  # 401: up, and asking for Ray's auth token (on by default)
            return cluster
        except OSError:
            time.sleep(0.5)
    tail = log.read_text()[-3000:]
    stop_cluster(cluster)
    raise TimeoutError(f"Ray head did not come up in {timeout}s:\n{tail}")


def start_worker_node(cluster: RayCluster, num_cpus: int = 1, env_extra: dict[str, str] | None = None,
                      attempts: int = 3) -> RayCluster:
    """``_start_worker_node``, again when it fails: on a loaded 2-core machine a joining raylet's first
    RPC to the GCS can miss Ray's own deadline ("Deadline Exceeded") and ``ray start`` exits."""
    for attempt in range(attempts):
        try:
            return _start_worker_node(cluster, num_cpus, env_extra)
        except RuntimeError:
            if attempt == attempts - 1:
                raise
            time.sleep(5)
    raise AssertionError("unreachable")


def _start_worker_node(cluster: RayCluster, num_cpus: int = 1, env_extra: dict[str, str] | None = None,
                       object_store_bytes: int = 100 * 1024**2, timeout: float = 120) -> RayCluster:
    """Another node of ``cluster`` on this machine: its own ``ray start`` with its own temp dir and
    ports (the dashboard agent's collide otherwise), and ``env_extra`` (e.g. its own MAGDI_SCRATCH)
    for every process it starts. Stopped by ``stop_cluster``; SIGKILL its process group to lose it."""
    temp_dir = Path(tempfile.mkdtemp(prefix="rw", dir="/tmp"))
    log = temp_dir / "ray-start.log"
    cmd = [
        RAY, "start", "--address", cluster.gcs_address, "--block", "--disable-usage-stats",
        "--temp-dir", str(temp_dir), "--num-cpus", str(num_cpus), "--num-gpus", "0",
        "--object-store-memory", str(object_store_bytes), "--node-ip-address", "127.0.0.1",
        "--dashboard-agent-listen-port", str(free_port()), "--dashboard-agent-grpc-port", str(free_port()),
        "--runtime-env-agent-port", str(free_port()), "--metrics-export-port", str(free_port()),
        "--node-manager-port", str(free_port()), "--object-manager-port", str(free_port()),
    ]  # fmt: skip
    env = base_env(temp_dir)
    env.update(RAY_USAGE_STATS_ENABLED="0", **cluster.auth, RAY_GRACEFUL_SHUTDOWN_DRAIN_TIMEOUT_S="0",
               **(env_extra or {}))
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    node = RayCluster(proc, temp_dir, cluster.gcs_address, cluster.dashboard_url, log)
    before = alive_nodes(cluster)
    deadline = time.monotonic() + timeout
    while alive_nodes(cluster) <= before:
        if proc.poll() is not None or time.monotonic() > deadline:
            tail = log.read_text()[-3000:]
            stop_cluster(node)
            raise RuntimeError(f"worker node did not join:\n{tail}")
        time.sleep(1)
    return node


def alive_nodes(cluster: RayCluster) -> int:
    import json

    out = subprocess.run([RAY, "list", "nodes", "--address", cluster.gcs_address, "--format", "json",
                          "--filter", "state=ALIVE"], env=cluster.env(), capture_output=True, text=True,
                         timeout=60).stdout
    try:
        return len(json.loads(out or "[]"))
    except ValueError:
        return 0


def stop_cluster(cluster: RayCluster, grace: float = 20) -> None:
    """SIGTERM the ``ray start`` process (its handler stops the processes it spawned), then SIGKILL
    whatever is left in its process group, then remove the temp dir."""
    pgid = cluster.proc.pid  # start_new_session: the group id is the leader's pid
    if cluster.proc.poll() is None:
        cluster.proc.send_signal(signal.SIGTERM)
        with contextlib.suppress(subprocess.TimeoutExpired):
            cluster.proc.wait(timeout=grace)
    with contextlib.suppress(ProcessLookupError):
        os.killpg(pgid, signal.SIGKILL)
    if cluster.proc.poll() is None:
        cluster.proc.wait(timeout=10)
    shutil.rmtree(cluster.temp_dir, ignore_errors=True)


@pytest.fixture(scope="module")
def ray_cluster():
    """One head per test module (starting one costs ~10 s): 4 logical CPUs on this 2-core machine, so
    two training workers and the driver's tasks fit; a 200 MB object store."""
    cluster = start_cluster()
    try:
        yield cluster
    finally:
        stop_cluster(cluster)


# --- tiny preprocessing assets (shared by the preprocess and Ray job tests) ----------------------

# A 1-layer, 32-wide Llama: node features cost ~1 ms per node on one CPU thread, so tests stay fast.
MICRO_MODEL = {"hidden_size": 32, "num_hidden_layers": 1, "num_attention_heads": 2, "intermediate_size": 64}


def write_synth_inputs(root: Path, files: dict[str, tuple[int, int]]) -> list[Path]:
    """``{name: (n, seed)}`` -> synthetic MAG JSONL files under ``root``."""
    from magdi_dist.mag.readers import write_mags_jsonl
    from magdi_dist.mag.synth import synth_mags

    root.mkdir(parents=True, exist_ok=True)
    paths = []
    for name, (n, seed) in files.items():
        write_mags_jsonl(synth_mags(n, seed=seed), root / name)
        paths.append(root / name)
    return paths


def tiny_feature_spec(root: Path, **rows):
    """A small BPE tokenizer trained on synthetic MAGs, saved under ``root``, and the micro model."""
    from magdi_dist.data.tokenizer import mag_texts, train_tokenizer
    from magdi_dist.mag.synth import synth_mags
    from magdi_dist.preprocess.featurize import FeatureSpec

    tok_dir = root / "tokenizer"
    if not tok_dir.is_dir():
        train_tokenizer(mag_texts(synth_mags(60, seed=123)), tok_dir, vocab_size=300)
    return FeatureSpec(tokenizer=str(tok_dir), model=MICRO_MODEL, rows={"max_length": 160, **rows})
