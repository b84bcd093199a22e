"""Step metrics: loss terms reduced over ranks and micro-steps, throughput, MFU, metrics.jsonl.

MFU = achieved model FLOP/s / peak FLOP/s, where achieved counts the LM (6N + head + attention per
token, model/flops.py) *and* the graph encoder (per node), summed over ranks. Peak is per rank, from
the config or measured with a square fp32 matmul at startup (on CPU there is no spec sheet to trust:
the measured peak includes the thread count this rank actually has).
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

MetricsCallback = Callable[[int, dict], None]

# Summed per micro-step and all-reduced once per optimizer step (one collective, not one per term).
SUMMED = ("loss", "ntp_loss", "margin_loss", "node_loss", "num_tokens", "num_nodes", "flops")


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                       repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP/s of an n x n matmul on this rank (a practical peak, not a spec).

    On CPU the matmul is timed on the process CPU clock, per intra-op thread: on a shared machine the
    wall clock also counts other tenants' time slices, and the peak it gives is too low (at load
    average ~10 on 2 cores, 37-42 GFLOP/s where the CPU clock gives 78-88, docs/benchmarks.md), which
    would make the logged MFU up to 2x too high. On GPU the wall clock between synchronisations is
    the right one."""
    gen = torch.Generator().manual_seed(0)  # a private generator: never shifts the training RNG
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up: thread pool, kernels
    on_cpu = device.type == "cpu"
    clock = time.process_time if on_cpu else time.perf_counter
    threads = torch.get_num_threads() if on_cpu else 1
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = clock()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, (clock() - t0) / threads)
    return 2.0 * n**3 / max(best, 1e-9)


class StepAccumulator:
    """Collects the micro-steps of one optimizer step on one rank, then reduces over ranks."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(SUMMED) + 1, dtype=torch.float64)  # last slot: micro-step count
        self.t0 = time.perf_counter()

    def add(self, out: dict, flops: float) -> None:
        vals = [float(out[k].detach()) for k in SUMMED[:-1]] + [flops, 1.0]
        self.sums += torch.tensor(vals, dtype=torch.float64)

    def reduce(self) -> dict:
        """Mean loss terms over all micro-steps of all ranks; token / node / FLOP totals over ranks."""
        import torch.distributed as dist

        t = self.sums.to(self.device)
        if dist.is_initialized() and dist.get_world_size() > 1:
            dist.all_reduce(t)
        t = t.cpu()
        count = t[-1].item()
        out = {k: t[i].item() / count for i, k in enumerate(SUMMED[:4])}
        out.update({k: t[i].item() for i, k in enumerate(SUMMED) if i >= 4})
        out["elapsed_s"] = time.perf_counter() - self.t0
        return out


def step_record(step: int, reduced: dict, lr: float, grad_norm: float | None, world_size: int,
                peak_flops: float, epoch: float) -> dict:
    """The metrics dict of one optimizer step (what the callback and metrics.jsonl receive)."""
    dt = max(reduced["elapsed_s"], 1e-9)
    rec = {
        "step": step,
        "epoch": epoch,
        "loss": reduced["loss"],
        "ntp_loss": reduced["ntp_loss"],
        "margin_loss": reduced["margin_loss"],
        "node_loss": reduced["node_loss"],
        "lr": lr,
        "grad_norm": grad_norm,
        "tokens": int(reduced["num_tokens"]),
        "tokens_per_s": reduced["num_tokens"] / dt,
        "step_time_s": dt,
        "flops": reduced["flops"],
        "mfu": reduced["flops"] / dt / (peak_flops * world_size),
    }
    return rec


class MetricsWriter:
    """Appends JSON lines on rank 0; on resume drops lines past the resumed step (a run killed after
    its last checkpoint logged steps that will be trained, and logged, again)."""

    def __init__(self, path: Path, enabled: bool, resume_step: int | None):
        self.path, self.enabled = path, enabled
        if enabled:
            path.parent.mkdir(parents=True, exist_ok=True)
            if resume_step is None:
                path.write_text("")
            elif path.exists():
                keep = [ln for ln in path.read_text().splitlines() if ln.strip()
                        and json.loads(ln).get("step", 0) <= resume_step]
                path.write_text("".join(ln + "\n" for ln in keep))

    def write(self, record: dict) -> None:
        if self.enabled:
            with self.path.open("a") as f:
                f.write(json.dumps(record) + "\n")


def read_metrics(path: str | Path) -> list[dict]:
    return [json.loads(ln) for ln in Path(path).read_text().splitlines() if ln.strip()]
