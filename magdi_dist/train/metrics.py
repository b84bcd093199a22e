"""Step metrics: loss terms reduced over ranks and micro-steps, throughput, MFU, metrics.jsonl.

MFU = achieved model FLOPs per wall-clock second / peak FLOP per wall-clock second, where achieved
counts the LM (per token of the rows that ran, LoRA-aware, model/flops.py) *and* the graph encoder
(per node), summed over ranks. Peak is per rank, from the config or measured with a square matmul at
startup, on the same clock as the step time it is compared with.

Nothing here reads a device value per step: a step's sums stay on the device (``StepAccumulator``)
and ``StepLog`` reduces and reads the steps of a whole logging interval at once, so on a GPU the host
never waits for the device between logging steps.
"""

from __future__ import annotations

import json
import time
from collections.abc import Callable
from pathlib import Path

import torch

MetricsCallback = Callable[[int, dict], None]

# Summed per micro-step on the device, all-reduced once per logging interval (one collective for all):
# the student's outputs, then what the loop counts (positive-chain tokens, FLOPs).
OUTPUTS = ("loss", "ntp_loss", "margin_loss", "node_loss", "num_tokens", "num_nodes")
SUMMED = (*OUTPUTS, "positive_tokens", "flops")


def positive_tokens(batch: dict) -> torch.Tensor:
    """Real tokens of a batch's positive chains (rows ``:B`` of the collated 2B rows, docs/CONTRACTS.md),
    a device scalar. ``num_tokens`` counts every row the LM ran (negatives and extra nodes for MAGDi,
    positives only for NTP-only), so its tokens/s compares different work across variants; these are
    the same tokens in every variant."""
    mask = batch["attention_mask"]
    return mask[: mask.shape[0] // 2].sum()


def measure_peak_flops(device: torch.device, dtype: torch.dtype = torch.float32, n: int = 1024,
                       repeats: int = 5) -> float:
    """Best-of-``repeats`` FLOP per wall-clock second of an n x n matmul on this rank (a practical
    peak, not a spec), with every intra-op thread this rank has.

    The wall clock, because MFU divides the step's FLOPs per wall-clock second (``step_time_s``) by
    it: a peak on another clock (the process CPU clock, per thread, as this once did) compares two
    different things, and on a shared machine the ratio then moves with the other tenants' load
    rather than with the step's efficiency. Best-of keeps the repetitions no other process interrupted.
    On GPU the device is synchronised around each matmul."""
    gen = torch.Generator().manual_seed(0)  # a private generator: never shifts the training RNG
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    torch.matmul(a, b)  # warm-up: thread pool, kernels
    best = float("inf")
    for _ in range(repeats):
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        t0 = time.perf_counter()
        torch.matmul(a, b)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        best = min(best, time.perf_counter() - t0)
    return 2.0 * n**3 / max(best, 1e-9)


class StepAccumulator:
    """Sums the micro-steps of one optimizer step on this rank, on the device: adding never waits for
    the device (no ``float()`` / ``.item()``); ``sums`` holds [loss terms..., tokens, nodes, positive-chain
    tokens, FLOPs, micro-steps] in float64 (exact for the counts, and the float32 losses convert exactly)."""

    def __init__(self, device: torch.device):
        self.device = device
        self.reset()

    def reset(self) -> None:
        self.sums = torch.zeros(len(SUMMED) + 1, dtype=torch.float64, device=self.device)  # last: micro-steps
        self.t0 = time.perf_counter()

    def add(self, out: dict, flops: torch.Tensor | float, positive: torch.Tensor | float = 0.0) -> None:
        """``positive``: the micro-batch's positive-chain tokens (``positive_tokens``)."""
        vals = [out[k].detach().to(self.device, torch.float64).reshape(()) for k in OUTPUTS]
        counted = [torch.as_tensor(v, dtype=torch.float64, device=self.device).reshape(()) for v in (positive, flops)]
        self.sums += torch.stack([*vals, *counted, torch.ones((), dtype=torch.float64, device=self.device)])

    def reduce(self) -> dict:
        """Mean loss terms over all micro-steps of all ranks; token / node / FLOP totals over ranks. A
        collective, and a read of the device: evaluation's summary, not the training step's."""
        (row,), _ = _all_reduce_rows([self.sums])
        out = _terms(row)
        out["elapsed_s"] = time.perf_counter() - self.t0
        return out


def _all_reduce_rows(rows: list[torch.Tensor], extra: list[torch.Tensor] = ()) -> tuple[list[list[float]], list[float]]:
    """Sum ``rows`` (equal-length float64 device vectors) over ranks in one collective and read them,
    with ``extra`` (scalars, not reduced), in one device-to-host copy."""
    import torch.distributed as dist

    t = torch.stack(rows)
    if dist.is_initialized() and dist.get_world_size() > 1:
        dist.all_reduce(t)
    flat = torch.cat([t.flatten(), *(e.reshape(1) for e in extra)]).cpu().tolist()
    width = t.shape[1]
    return [flat[i * width:(i + 1) * width] for i in range(len(rows))], flat[len(rows) * width:]


def _terms(row: list[float]) -> dict:
    count = row[-1]
    out = {k: row[i] / count for i, k in enumerate(SUMMED[:4])}
    out.update({k: row[i] for i, k in enumerate(SUMMED) if i >= 4})
    return out


class StepLog:
    """Optimizer steps whose metrics are still on the device, read a logging interval at a time.

    ``push`` keeps a step's sums and grad norm where they are; ``read`` (a collective: every rank
    calls it at the same steps) all-reduces the pending steps' sums in one call, copies them and the
    grad norms to the host in one transfer and returns one record per step, each the same numbers
    a per-step read gives. ``step_time_s`` is each step's own host time; the read's wait for the
    device is added to the step that reads, so the interval's step times sum to its wall time. (On
    a GPU the steps between reads only queue work, so per-step times there are launch times.)"""

    def __init__(self, device: torch.device, world_size: int, peak_flops: float):
        self.device, self.world_size, self.peak_flops = device, world_size, peak_flops
        self.pending: list[tuple[int, torch.Tensor, float, float, float, torch.Tensor | float | None]] = []

    def push(self, step: int, acc: StepAccumulator, lr: float, epoch: float,
             grad_norm: torch.Tensor | float | None) -> None:
        if isinstance(grad_norm, torch.Tensor):  # a copy: DeepSpeed may reuse its norm tensor next step
            grad_norm = grad_norm.detach().to(self.device, torch.float64, copy=True)
        self.pending.append((step, acc.sums, time.perf_counter() - acc.t0, lr, epoch, grad_norm))

    def read(self) -> list[dict]:
        if not self.pending:
            return []
        t0 = time.perf_counter()
        norms = [g for *_, g in self.pending if isinstance(g, torch.Tensor)]
        rows, norm_values = _all_reduce_rows([p[1] for p in self.pending], norms)
        waited = time.perf_counter() - t0
        read_norms = iter(norm_values)
        records = []
        for i, ((step, _, elapsed, lr, epoch, grad_norm), row) in enumerate(zip(self.pending, rows, strict=True)):
            reduced = _terms(row)
            reduced["elapsed_s"] = elapsed + (waited if i == len(rows) - 1 else 0.0)
            norm = next(read_norms) if isinstance(grad_norm, torch.Tensor) else grad_norm
            records.append(step_record(step, reduced, lr, norm, self.world_size, self.peak_flops, epoch))
        self.pending = []
        return records


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
        "tokens": int(reduced["num_tokens"]),  # every row the LM ran
        "tokens_per_s": reduced["num_tokens"] / dt,
        "positive_tokens": int(reduced["positive_tokens"]),  # the positive chains: the same in every variant
        "positive_tokens_per_s": reduced["positive_tokens"] / dt,
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
