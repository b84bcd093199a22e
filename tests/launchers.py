"""The real launchers (torchrun, the deepspeed launcher, plain python) as subprocesses, and a small run
config; shared by the tests/test_train_*.py modules (no tests here)."""

from __future__ import annotations

import json
import os
import socket
import subprocess
import sys
from pathlib import Path

import yaml

REPO = Path(__file__).resolve().parents[1]
RANK_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "MASTER_ADDR", "MASTER_PORT",
             "GROUP_RANK", "LOCAL_SIZE")

# ~60k-parameter Llama + GCN on 40 synthetic MAGs: a 2-rank run is dominated by process start-up.
SMALL = {
    "model": {"base": {"hidden_size": 64, "num_hidden_layers": 2, "num_attention_heads": 4,
                       "intermediate_size": 128}, "gcn_hidden": 32},
    "data": {"synthetic": {"n": 40}, "max_len": 96, "vocab_size": 400},
    "train": {"max_steps": 6, "micro_batch_size": 4, "lr": 3e-3, "warmup_steps": 2, "progress": False},
}


def write_config(path: Path, tree: dict = SMALL) -> Path:
    path.write_text(yaml.safe_dump(tree))
    return path


def clean_env() -> dict:
    """No rank variables: the child gets them from its launcher, or from our defaults."""
    env = {k: v for k, v in os.environ.items() if k not in RANK_VARS}
    env["PYTHONPATH"] = str(REPO) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def _run(cmd: list[str], timeout: int = 420) -> subprocess.CompletedProcess:
    proc = subprocess.run(cmd, cwd=REPO, env=clean_env(), capture_output=True, text=True, timeout=timeout)
    if proc.returncode != 0:
        raise AssertionError(f"{' '.join(cmd)} failed ({proc.returncode}):\n{proc.stdout[-3000:]}\n"
                             f"{proc.stderr[-6000:]}")
    return proc


def torchrun(config: Path, *overrides: str, nproc: int = 2, resume: bool = False):
    return _run([sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc_per_node={nproc}",
                 "-m", "magdi_dist.launch.rank", "--config", str(config),
                 "--resume" if resume else "--no-resume", *overrides])


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def deepspeed_launcher(config: Path, *overrides: str, nproc: int = 2, resume: bool = False):
    launcher = str(Path(sys.executable).parent / "deepspeed")
    return _run([launcher, f"--num_gpus={nproc}", f"--master_port={free_port()}", "--module",
                 "magdi_dist.launch.rank", "--config", str(config), "--resume" if resume else "--no-resume",
                 *overrides])


def single_process(config: Path, *overrides: str, resume: bool = False):
    """The CLI in one plain python process, no rank env vars at all."""
    return _run([sys.executable, "-m", "magdi_dist.cli", "train", "--config", str(config),
                 "--resume" if resume else "--no-resume", *overrides])


def losses(run_dir: Path, key: str = "loss") -> list[float]:
    recs = [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]
    return [r[key] for r in recs if "step" in r and key in r and "eval_loss" not in r]


def train_records(run_dir: Path) -> list[dict]:
    return [json.loads(line) for line in (run_dir / "metrics.jsonl").read_text().splitlines() if line]


CURVE_KEYS = ("step", "epoch", "loss", "ntp_loss", "margin_loss", "node_loss", "lr", "grad_norm", "tokens")


def assert_same_run(ref: Path, run: Path, label: str) -> None:
    """``run`` (resumed, restarted) ended exactly as the uninterrupted ``ref``: bit-identical exported
    weights (LM and graph encoder) and the same training curve, step by step."""
    import torch
    from safetensors.torch import load_file

    for name in ("model.safetensors", "graph_encoder.safetensors"):
        a, b = load_file(ref / "export" / name), load_file(run / "export" / name)
        assert a.keys() == b.keys()
        for key in a:
            assert torch.equal(a[key], b[key]), f"{label}: {name}:{key} differs"
    curve = [tuple(r.get(k) for k in CURVE_KEYS) for r in train_records(ref)]
    assert [tuple(r.get(k) for k in CURVE_KEYS) for r in train_records(run)] == curve, label
