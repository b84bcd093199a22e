"""Fixtures of the debate tests: an in-process local Ray (module-scoped), the real teacher endpoint
(``transformers serve`` of SmolLM2-135M-Instruct on a free loopback port, stopped by its pid), the
error stub (tests/debate_stub.py, the same way), and a small config builder."""

from __future__ import annotations

import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

import pytest

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))  # the repo root: benchmarks/ is no installed package

from benchmarks.serving import SAMPLING_EXTRA_BODY, free_port, start_transformers_serve  # noqa: E402
from magdi_dist.debate.config import debate_config_from_dict  # noqa: E402

MODEL = "smollm2-135m-instruct"


@pytest.fixture(scope="module")
def local_ray():
    """An embedded Ray for the module; run_debate joins it instead of starting its own each run."""
    import ray

    started = not ray.is_initialized()  # another module's Ray is reused and left to its owner
    if started:
        ray.init(num_cpus=2, include_dashboard=False, log_to_driver=False)
    yield
    if started:
        ray.shutdown()


@pytest.fixture(scope="module")
def model_dir() -> Path:
    from magdi_dist.model.sources import checkpoint_dir

    return Path(checkpoint_dir(MODEL))


def serve(model_dir: Path, workdir: Path):
    # One intra-op thread, as every process of the suite (conftest.py): on a shared 2-core machine a
    # 2-thread OpenMP pool spins at its barriers and made each reply 10x slower.
    return start_transformers_serve(model_dir, workdir, name=MODEL, threads=1)


@pytest.fixture(scope="module")
def teacher_server(model_dir, tmp_path_factory):
    server = serve(model_dir, tmp_path_factory.mktemp("serve"))
    try:
        yield server
    finally:
        server.stop()


def agents(base_url: str, k: int = 3, max_tokens: int = 32, sample: bool = True) -> list[dict]:
    """k agents on one endpoint, differing by seed and temperature; the last one has a persona too."""
    out = []
    for i in range(k):
        agent = {"name": f"agent{i}", "base_url": base_url, "model": MODEL, "temperature": round(0.7 + 0.2 * i, 2),
                 "seed": i, "max_tokens": max_tokens}
        if sample:
            agent["extra_body"] = SAMPLING_EXTRA_BODY
        if i == k - 1 and k > 1:
            agent["system_prompt"] = "You are a careful math teacher. Be brief."
        out.append(agent)
    return out


def config(tmp_path: Path, questions: Path, base_url: str, *, limit: int, k: int = 3, rounds: int = 2,
           max_tokens: int = 32, sample: bool = True, **extra):
    tree = {"agents": agents(base_url, k, max_tokens, sample), "rounds": rounds,
            "questions": {"path": str(questions), "limit": limit}, "out": str(tmp_path / "mags.jsonl"),
            "limits": {"max_concurrency": 3, "timeout_s": 120, "max_retries": 1, "backoff_initial_s": 0.1}, **extra}
    return debate_config_from_dict(tree)


@dataclass
class Stub:
    proc: subprocess.Popen
    port: int
    log: Path

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=10)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)


def start_stub(workdir: Path, *, healthy: bool = False) -> Stub:
    port = free_port()
    log = workdir / f"stub-{port}.jsonl"
    cmd = [sys.executable, str(Path(__file__).with_name("debate_stub.py")), str(port), str(log)]
    proc = subprocess.Popen(cmd + (["--healthy"] if healthy else []), cwd=workdir)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=1):
                return Stub(proc, port, log)
        except (urllib.error.URLError, OSError):
            if proc.poll() is not None:
                raise RuntimeError(f"stub exited with {proc.returncode}") from None
            time.sleep(0.1)
    proc.kill()
    raise TimeoutError("stub did not come up")
