"""Test helpers for the tracking tests: a real ``mlflow server``, cheap SQLite stores, a tiny student.

Not a test module (no ``test_`` prefix); test modules import from it (pytest puts ``tests/`` on
``sys.path``). Kept out of ``conftest.py`` on purpose: only the tracking tests need MLflow.

Creating an MLflow SQLite schema runs ~60 alembic migrations (10-20 s on a loaded 2-core box), so
the schema is built once per process and every store that needs a fresh database gets a file copy.
"""

from __future__ import annotations

import atexit
import contextlib
import functools
import os
import shutil
import signal
import socket
import subprocess
import sys
import tempfile
import time
import urllib.request
from collections.abc import Iterator
from pathlib import Path

MLFLOW_ENV_KEYS = ("MLFLOW_TRACKING_URI", "MLFLOW_REGISTRY_URI")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


@functools.cache
def sqlite_template() -> Path:
    """Path of an MLflow SQLite database with the current schema and no experiments of ours."""
    from mlflow.tracking import MlflowClient

    root = Path(tempfile.mkdtemp(prefix="magdi-mlflow-template-"))
    atexit.register(shutil.rmtree, root, ignore_errors=True)
    db = root / "mlflow.db"
    MlflowClient(tracking_uri=f"sqlite:///{db}").search_experiments()  # creates the schema
    return db


def fresh_sqlite_store(output_dir: str | os.PathLike) -> str:
    """The embedded store of ``output_dir`` (via ``resolve_tracking_uri``), seeded from the template."""
    from magdi_dist.track.store import embedded_paths, resolve_tracking_uri

    db, _ = embedded_paths(output_dir)
    db.parent.mkdir(parents=True, exist_ok=True)
    shutil.copyfile(sqlite_template(), db)
    return resolve_tracking_uri(output_dir)


def _stop(proc: subprocess.Popen) -> None:
    """Stop the server's whole process group (uvicorn worker included), by its own pgid only."""
    if proc.poll() is not None:
        return
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGTERM)
    try:
        proc.wait(timeout=20)
    except subprocess.TimeoutExpired:
        with contextlib.suppress(ProcessLookupError):
            os.killpg(proc.pid, signal.SIGKILL)
        proc.wait(timeout=10)
    # The uvicorn worker can outlive the parent for a moment; make sure the group is gone.
    with contextlib.suppress(ProcessLookupError):
        os.killpg(proc.pid, signal.SIGKILL)


@contextlib.contextmanager
def running_mlflow_server(root: str | os.PathLike, timeout_s: float = 180.0) -> Iterator[str]:
    """Start ``mlflow server`` on a free port with its own SQLite store and artifact folder; yield its URL.

    Lean settings: one uvicorn worker, no job-execution runner (MLflow 3 starts a huey consumer for
    server-side jobs by default; we never use it). Artifacts are proxied (``--serve-artifacts`` is
    the 3.x default) to ``root/art``. Stopped in ``finally``, so a failing test cannot leak it.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    db = root / "db.sqlite"
    shutil.copyfile(sqlite_template(), db)
    port = free_port()
    url = f"http://127.0.0.1:{port}"
    env = {k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}
    env["MLFLOW_SERVER_ENABLE_JOB_EXECUTION"] = "false"
    cmd = [
        sys.executable, "-m", "mlflow", "server",
        "--host", "127.0.0.1",
        "--port", str(port),
        "--backend-store-uri", f"sqlite:///{db}",
        "--artifacts-destination", str(root / "art"),
        "--workers", "1",
    ]  # fmt: skip
    log_path = root / "server.log"
    with open(log_path, "wb") as log_file:
        # start_new_session: the server gets its own process group, so stopping it cannot hit us.
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    atexit.register(_stop, proc)  # safety net if the session is interrupted before teardown
    try:
        _wait_healthy(url, proc, log_path, timeout_s)
        yield url
    finally:
        _stop(proc)


@contextlib.contextmanager
def serving_model(model_uri: str, tracking_uri: str, root: str | os.PathLike, timeout_s: float = 300.0
                  ) -> Iterator[str]:
    """``mlflow models serve -m MODEL_URI --env-manager local`` on a free 127.0.0.1 port; yield its URL.

    The CLI resolves ``models:/`` URIs through ``MLFLOW_TRACKING_URI`` and runs the scoring server
    (uvicorn) as its child, so it gets its own process group and is stopped by that group's id.
    ``/health`` answers only once the model has loaded.
    """
    root = Path(root)
    root.mkdir(parents=True, exist_ok=True)
    port = free_port()
    env = {**{k: v for k, v in os.environ.items() if k not in MLFLOW_ENV_KEYS}, "MLFLOW_TRACKING_URI": tracking_uri}
    # The CLI execs ``uvicorn`` by name: this interpreter's bin folder (the venv's) must be on PATH.
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    cmd = [sys.executable, "-m", "mlflow", "models", "serve", "-m", model_uri, "--env-manager", "local",
           "--host", "127.0.0.1", "--port", str(port), "--workers", "1"]  # fmt: skip
    log_path = root / "serve.log"
    with open(log_path, "wb") as log_file:
        proc = subprocess.Popen(cmd, stdout=log_file, stderr=subprocess.STDOUT, env=env, start_new_session=True)
    atexit.register(_stop, proc)
    try:
        _wait_healthy(f"http://127.0.0.1:{port}", proc, log_path, timeout_s)
        yield f"http://127.0.0.1:{port}"
    finally:
        _stop(proc)


def _wait_healthy(url: str, proc: subprocess.Popen, log_path: Path, timeout_s: float) -> None:
    deadline = time.monotonic() + timeout_s
    while time.monotonic() < deadline:
        if proc.poll() is not None:
            raise RuntimeError(f"mlflow server exited with {proc.returncode}:\n{log_path.read_text()[-3000:]}")
        with contextlib.suppress(OSError), urllib.request.urlopen(f"{url}/health", timeout=2) as resp:
            if resp.status == 200:
                return
        time.sleep(0.5)
    raise TimeoutError(f"mlflow server not healthy after {timeout_s}s:\n{log_path.read_text()[-3000:]}")


@contextlib.contextmanager
def mlflow_globals_restored() -> Iterator[None]:
    """Snapshot MLflow's process-global URIs and env vars; restore them afterwards (per test)."""
    import mlflow
    from mlflow.tracking._model_registry import utils as reg_utils
    from mlflow.tracking._tracking_service import utils as trk_utils

    env = {k: os.environ.get(k) for k in MLFLOW_ENV_KEYS}
    trk, reg = trk_utils._tracking_uri, reg_utils._registry_uri
    try:
        yield
    finally:
        while mlflow.active_run() is not None:
            mlflow.end_run()
        mlflow.set_tracking_uri(trk)
        reg_utils._registry_uri = reg
        for key, value in env.items():
            if value is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = value


def make_tiny_student(path: str | os.PathLike, seed: int = 0, with_zero_junk: bool = True) -> Path:
    """An exported-student directory like the trainer writes, built offline in well under a second.

    Byte-level BPE tokenizer trained on a few sentences, a 1-layer ``LlamaForCausalLM``, a
    ``graph_encoder.safetensors``; with ``with_zero_junk`` also DeepSpeed checkpoint debris that must
    never be logged.
    """
    import torch
    from safetensors.torch import save_file
    from tokenizers import ByteLevelBPETokenizer
    from transformers import LlamaConfig, LlamaForCausalLM, PreTrainedTokenizerFast

    path = Path(path)
    path.mkdir(parents=True, exist_ok=True)
    corpus = [
        "Question: Is the sky blue? Answer: yes, the sky is blue.",
        "Question: What is 2 + 3? Answer: 2 + 3 = 5, so the answer is \\boxed{5}.",
        "Agents discuss the problem over several rounds and agree on the final answer.",
    ] * 4
    bpe = ByteLevelBPETokenizer()
    bpe.train_from_iterator(corpus, vocab_size=320, min_frequency=1, special_tokens=["<s>", "</s>", "<pad>"])
    tok = PreTrainedTokenizerFast(tokenizer_object=bpe._tokenizer, bos_token="<s>", eos_token="</s>", pad_token="<pad>")
    torch.manual_seed(seed)
    config = LlamaConfig(
        vocab_size=len(tok),
        hidden_size=32,
        intermediate_size=64,
        num_hidden_layers=1,
        num_attention_heads=2,
        num_key_value_heads=2,
        max_position_embeddings=256,
        bos_token_id=tok.bos_token_id,
        eos_token_id=tok.eos_token_id,
        pad_token_id=tok.pad_token_id,
    )
    LlamaForCausalLM(config).save_pretrained(path)
    tok.save_pretrained(path)
    save_file({"gcn.weight": torch.randn(32, 32)}, str(path / "graph_encoder.safetensors"))
    (path / "graph_encoder.json").write_text('{"hidden": 32, "layers": 2}')
    if with_zero_junk:
        (path / "global_step7").mkdir(exist_ok=True)
        torch.save({"x": torch.zeros(2)}, path / "global_step7" / "mp_rank_00_model_states.pt")
        (path / "latest").write_text("global_step7")
        (path / "zero_to_fp32.py").write_text("# deepspeed helper\n")
    return path
