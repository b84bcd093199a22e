"""A local OpenAI-compatible endpoint for a model directory: ``transformers serve`` on 127.0.0.1, on a
free port, in its own process group with its own temp dir, stopped by its pid. The teacher endpoint
of the debate tests (tests/debate_fixtures.py) and of benchmarks/experiments/debate_throughput.py;
here, not in ``magdi_dist.debate``, because the library talks to any OpenAI-compatible server and
never starts one itself. Not a figure (no ``NAME``). ``serving`` and ``abba`` are the server start and the
run order that the serving experiments (benchmarks/experiments/debate_throughput.py, eval_throughput.py)
share.

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
import subprocess
import sys
import time
import urllib.error
import urllib.request
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

# The package's one free-port helper (the library picks MASTER_PORT with it); the tests use it too.
from magdi_dist.train.dist import free_port

__all__ = ["SAMPLING_EXTRA_BODY", "LocalServer", "abba", "free_port", "launch_transformers_serve", "serving",
           "start_transformers_serve"]

# What an agent's extra_body must carry for transformers serve to sample (temperature, top_p, seed).
SAMPLING_EXTRA_BODY = {"generation_config": json.dumps({"do_sample": True})}

_ANSWERED = re.compile(r'"POST /v1/(?:chat/)?completions HTTP/1\.1" 200')  # chat and text completions


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

    def wait_ready(self, timeout: float = 180) -> LocalServer:
        """Wait until /health answers (at once when it already does); stopped, and an error with the
        end of its log, when it exits or does not answer within ``timeout`` s."""
        deadline = time.monotonic() + timeout
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise RuntimeError(f"transformers serve exited with {self.proc.returncode}:\n"
                                   f"{self.log.read_text()[-3000:]}")
            try:
                with urllib.request.urlopen(f"http://127.0.0.1:{self.port}/health", timeout=2):
                    return self
            except (urllib.error.URLError, OSError):
                time.sleep(0.2)
        self.stop()
        raise TimeoutError(f"transformers serve did not answer /health in {timeout} s:\n{self.log.read_text()[-3000:]}")

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


def launch_transformers_serve(model_dir: str | Path, workdir: str | Path, *, name: str | None = None,
                              port: int | None = None, threads: int | None = None) -> LocalServer:
    """Start ``transformers serve`` for ``model_dir`` on 127.0.0.1 and return at once; its
    ``wait_ready`` waits until /health answers. Launching several servers (or a server and other work)
    before waiting overlaps their start-ups, which are mostly one CPU core importing and loading.

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
    return LocalServer(proc, port, log, name)


def start_transformers_serve(model_dir: str | Path, workdir: str | Path, *, name: str | None = None,
                             port: int | None = None, threads: int | None = None, timeout: float = 180) -> LocalServer:
    """``launch_transformers_serve``, then wait until it answers."""
    server = launch_transformers_serve(model_dir, workdir, name=name, port=port, threads=threads)
    return server.wait_ready(timeout)


@contextlib.contextmanager
def serving(model_dir: str | Path, workdir: str | Path, *, name: str, threads: int | None) -> Iterator[LocalServer]:
    """A benchmark's server for the duration of the block: a SIGTERM meanwhile (a killed bench run)
    raises SystemExit, so the server is still stopped; the previous SIGTERM handling is restored after,
    for the rest of the bench run."""
    previous = signal.signal(signal.SIGTERM, lambda *_: sys.exit(143))
    try:
        server = start_transformers_serve(model_dir, workdir, name=name, threads=threads)
        try:
            yield server
        finally:
            server.stop()
    finally:
        signal.signal(signal.SIGTERM, previous)


def abba(reps: int, a, b) -> Iterator[tuple[int, int, object]]:
    """``(rep, k, variant)`` for each repetition's four runs in ABBA order: on a shared machine a
    linear drift in load then weighs on both variants alike."""
    for rep in range(reps):
        for k, variant in enumerate((a, b, b, a)):
            yield rep, k, variant
