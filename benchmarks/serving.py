"""A local OpenAI-compatible endpoint for a model directory: ``transformers serve`` on 127.0.0.1, on a
free port, in its own process group with its own temp dir, stopped by its pid. The teacher endpoint
of the debate tests (tests/debate_fixtures.py) and of benchmarks/experiments/debate_throughput.py;
here, not in ``magdi_dist.debate``, because the library talks to any OpenAI-compatible server and
never starts one itself. Not a figure (no ``NAME``).

Only ``transformers serve`` is needed (``pip install 'transformers[serving]'``); it runs offline on a
plain HF directory such as ``magdi_dist.model.sources.checkpoint_dir("smollm2-135m-instruct")``.
Note: it decodes greedily unless a request carries ``generation_config`` with ``do_sample`` (see
``SAMPLING_EXTRA_BODY``); temperature alone does not make it sample.
"""

from __future__ import annotations

import contextlib
import json
import os
import re
import shutil
import signal
import socket
import subprocess
import sys
import time
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

# What an agent's extra_body must carry for transformers serve to sample (temperature, top_p, seed).
SAMPLING_EXTRA_BODY = {"generation_config": json.dumps({"do_sample": True})}

_ANSWERED = re.compile(r'"POST /v1/(?:chat/)?completions HTTP/1\.1" 200')  # chat and text completions


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@dataclass
class LocalServer:
    proc: subprocess.Popen
    port: int
    log: Path
    model: str  # the name requests must give

    @property
    def base_url(self) -> str:
        return f"http://127.0.0.1:{self.port}/v1"

    def answered(self) -> int:
        """Completions (chat or text) this server answered with 200 (its access log, written unbuffered)."""
        return len(_ANSWERED.findall(self.log.read_text(errors="replace"))) if self.log.exists() else 0

    def stop(self, sig: int = signal.SIGTERM, grace: float = 15) -> None:
        """Signal the server's process group (SIGKILL: a crash), wait, then SIGKILL what is left."""
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, sig)
        with contextlib.suppress(subprocess.TimeoutExpired):
            self.proc.wait(timeout=grace)
        with contextlib.suppress(ProcessLookupError):
            os.killpg(self.proc.pid, signal.SIGKILL)
        self.proc.wait(timeout=10)


def _transformers_cli() -> str:
    beside = Path(sys.executable).with_name("transformers")
    found = str(beside) if beside.is_file() else shutil.which("transformers")
    if not found:
        raise FileNotFoundError("the `transformers` command is not installed: pip install 'transformers[serving]'")
    return found


def start_transformers_serve(model_dir: str | Path, workdir: str | Path, *, name: str | None = None,
                             port: int | None = None, threads: int | None = None, timeout: float = 180) -> LocalServer:
    """Start ``transformers serve`` for ``model_dir`` on 127.0.0.1 and wait until /health answers.

    A server started on a path answers only requests naming that exact path; serving a link called
    ``name`` (default: the directory's name) inside ``workdir`` lets requests say ``model: name``."""
    workdir = Path(workdir)
    workdir.mkdir(parents=True, exist_ok=True)
    name = name or Path(model_dir).name
    link = workdir / name
    if not link.exists():
        link.symlink_to(Path(model_dir).resolve(), target_is_directory=True)
    port = port or free_port()
    log = workdir / f"transformers-serve-{port}.log"
    env = {**os.environ, "HF_HUB_OFFLINE": "1", "HF_HOME": str(workdir / "hf"), "PYTHONUNBUFFERED": "1"}
    if threads is not None:
        env["OMP_NUM_THREADS"] = str(threads)
    cmd = [_transformers_cli(), "serve", name, "--host", "127.0.0.1", "--port", str(port), "--log-level", "info"]
    with log.open("w") as fh:
        proc = subprocess.Popen(cmd, stdout=fh, stderr=subprocess.STDOUT, env=env, cwd=workdir,
                                start_new_session=True)
    server = LocalServer(proc, port, log, name)
    deadline = time.monotonic() + timeout
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"transformers serve exited with {proc.returncode}:\n{log.read_text()[-3000:]}")
        try:
            with urllib.request.urlopen(f"http://127.0.0.1:{port}/health", timeout=2):
                return server
        except (urllib.error.URLError, OSError):
            time.sleep(0.5)
    server.stop()
    raise TimeoutError(f"transformers serve did not answer /health in {timeout} s:\n{log.read_text()[-3000:]}")
