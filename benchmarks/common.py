"""Shared pieces of the benchmarks: run settings, machine description, fixtures, interleaved timing.

Every figure is a *ratio of two things measured side by side in one run*: the machine is a shared,
noisy 2-core VM, so an absolute time only means something next to its baseline measured seconds
apart under the same load. ``interleaved`` runs the variants in ABBA order each repetition (cancels
a linear drift in load) and the figures use medians (robust to one disturbed repetition).

Two clocks per sample: wall (``perf_counter``) and this process's CPU time (``process_time``). With
one intra-op thread per process, CPU time is the work the code needs, while wall time also counts
the time the scheduler gave our core to other tenants: in the first full run (load average 5-10 on
2 cores) back-to-back wall-clock ratios of *identical* code ranged 0.5-2.4. Ratios are reported on
both clocks; the goals are checked on CPU time, and the JSON keeps the wall-clock ones next to them.
Even CPU time varies by +-15% under that load (cache and memory-bandwidth contention, and it drifts
as other jobs start and stop), so a ratio is the median of per-repetition ratios of back-to-back
samples (``paired_ratio``), and the step benchmark carries an A/A control (two identical engines)
that shows the noise floor of the run.
"""

from __future__ import annotations

import os
import platform
import statistics
import subprocess
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import TYPE_CHECKING

if TYPE_CHECKING:  # torch is imported only after set_threads (the OpenMP pool size is fixed at first use)
    import torch

ROOT = Path(__file__).resolve().parents[1]  # the checkout whose code runs (configs, child processes)


def checkout_of(path: Path) -> Path | None:
    """The source checkout ``path`` is in (the nearest folder holding benchmarks/__main__.py), or None.
    Results default to the checkout the user stands in, which need not be the one ``magdi_dist`` was
    installed from."""
    path = path.resolve()
    return next((d for d in (path, *path.parents) if (d / "benchmarks" / "__main__.py").is_file()), None)


@dataclass
class Settings:
    """What one ``python -m benchmarks`` run uses; ``quick`` shrinks everything for the smoke test."""

    quick: bool = False
    threads: int = 1
    workdir: Path = field(default_factory=lambda: Path("/tmp/magdi_bench"))
    reps: int = 9  # interleaved repetitions per timed variant (small models; big ones use fewer)
    peer_reps: int = 15  # steps per variant of the peer figure (SmolLM2-135M: seconds per step)
    options: dict[str, str] = field(default_factory=dict)  # --set KEY=VALUE (benchmarks/figure.py options)

    @property
    def presets(self) -> list[str]:
        return ["tiny-1m"] if self.quick else ["tiny-1m", "tiny-20m"]

    @property
    def largest(self) -> str:
        return "tiny-1m" if self.quick else "tiny-20m"


def thread_env(n: int) -> None:
    """The thread settings in the environment only (no torch import): before any module that imports
    torch, since OpenMP reads them when it is loaded, and so child processes inherit them."""
    for key in ("OMP_NUM_THREADS", "MKL_NUM_THREADS"):
        os.environ[key] = str(n)
    os.environ.setdefault("TOKENIZERS_PARALLELISM", "false")
    os.environ.setdefault("DS_ACCELERATOR", "cpu")


def set_threads(n: int) -> None:
    """Pin intra-op threads (and the env, so torchrun children inherit it) before any timing.

    Default 1: with the other engineers' test runs on the same 2 cores, a 2-thread OpenMP pool spins
    against them and one tiny-1m step went from 0.22 s to 1.24 s (measured while writing this).
    """
    thread_env(n)
    import torch

    torch.set_num_threads(n)


def _version(mod: str) -> str:
    try:
        from importlib.metadata import version

        return version(mod)
    except Exception:  # noqa: BLE001 -- a missing package is reported, not fatal
        return "absent"


def _cpu_model() -> str:
    try:
        for line in Path("/proc/cpuinfo").read_text().splitlines():
            if line.startswith("model name"):
                return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or "unknown"


def _git(*args: str) -> str:
    try:
        return subprocess.run(["git", *args], cwd=ROOT, capture_output=True, text=True, timeout=10).stdout.strip()
    except (OSError, subprocess.SubprocessError):
        return ""


def commit_id() -> str:
    """The checkout's short commit, "+dirty" with uncommitted changes (what a figure was measured on)."""
    return _git("rev-parse", "--short", "HEAD") + ("+dirty" if _git("status", "--porcelain") else "")


def machine_info(settings: Settings) -> dict:
    import torch

    flags = Path("/proc/cpuinfo").read_text() if Path("/proc/cpuinfo").exists() else ""
    isa = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "fma") if f" {f}" in flags]
    return {
        "cpu_model": _cpu_model(),
        "cores": os.cpu_count(),
        "isa": isa,
        "torch_threads": torch.get_num_threads(),
        "settings_threads": settings.threads,
        "loadavg_start": list(os.getloadavg()),
        "python": platform.python_version(),
        "versions": {m: _version(m) for m in ("torch", "deepspeed", "transformers", "torch_geometric", "ray", "trl",
                                              "peft")},
        "blas": "mkl" if torch.backends.mkl.is_available() else "other",
        "git_commit": _git("rev-parse", "--short", "HEAD"),
        "git_dirty": bool(_git("status", "--porcelain", "--", "magdi_dist")),
        "quick": settings.quick,
        "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
    }


# --- fixtures -------------------------------------------------------------------------------------


def tokenizer(settings: Settings):
    """The byte-level BPE tokenizer of configs/tiny.yaml (vocab 512), trained once per workdir."""
    from transformers import AutoTokenizer

    out = settings.workdir / "tokenizer"
    if not (out / "tokenizer.json").exists():
        from magdi_dist.data.tokenizer import mag_texts, train_tokenizer
        from magdi_dist.mag.synth import synth_mags

        train_tokenizer(mag_texts(synth_mags(200, agents=3, rounds=3, seed=0)), out, vocab_size=512)
    return AutoTokenizer.from_pretrained(str(out))


def hidden_of(base: str) -> int:
    """LM hidden size of a tiny preset (node features of live graph features must have it)."""
    from magdi_dist.model import TINY_PRESETS

    return TINY_PRESETS[base]["hidden_size"]


def synthetic_rows(tok, hidden: int, n_mags: int = 64, max_len: int = 128, seed: int = 0) -> list[dict]:
    """Example rows of synthetic 3x3 MAGs with zero node features of width ``hidden``.

    Zero instead of frozen features: the step costs the same whatever the feature values are, and it
    saves running every node through the LM for each preset.
    """
    from magdi_dist.data import RowConfig, rows_from_mags, zero_features
    from magdi_dist.mag.synth import synth_mags

    mags = synth_mags(n_mags, agents=3, rounds=3, seed=seed)
    return rows_from_mags(mags, tok, RowConfig(max_length=max_len), zero_features(hidden))


def sampled_batches(rows: list[dict], micro: int, count: int, seed: int = 0,
                    representative: bool = False) -> list[list[dict]]:
    """``count`` micro-batches as the training sampler draws them (length-grouped, shuffled).

    ``representative``: skip batches until each has the data set's average number of pairs without
    a negative (round(micro x rate): 1 of 8 on the synthetic demo data). Those pairs' placeholder
    rows are what the student skips, so with 1-2 batches per sample, a batch with none (a quarter of
    them) would hide that cost and one with three would exaggerate it.
    """
    from magdi_dist.train.sampler import LengthGroupedSampler

    lengths = [max(len(r["pos_input_ids"]), len(r["neg_input_ids"]) or 1) for r in rows]
    sampler = LengthGroupedSampler(lengths, micro, 1, 0, seed=seed)
    stream = sampler.iter_from(0)
    want = round(micro * sum(not r["has_negative"] for r in rows) / len(rows))
    out: list[list[dict]] = []
    for _ in range(100 * count):
        batch = [rows[i] for i in next(stream)[1]]
        if not representative or sum(not r["has_negative"] for r in batch) == want:
            out.append(batch)
        if len(out) == count:
            return out
    raise ValueError(f"no {count} batches with {want} pairs without a negative in 100x as many draws")


def make_config(base: str | dict, *, micro: int = 8, stage: int = 2, **model):
    """A MAGDiConfig as configs/tiny.yaml would give (ZeRO preset, fp32, torch AdamW on CPU)."""
    from magdi_dist.config import config_from_dict

    return config_from_dict({
        "model": {"base": base, **model},
        "data": {"max_len": 128, "vocab_size": 512},
        "train": {"micro_batch_size": micro, "deepspeed": f"zero{stage}", "lr": 1e-4, "progress": False},
    })


# The torch.distributed variables of this process's own one-process group (``ensure_dist``).
DIST_VARS = ("RANK", "WORLD_SIZE", "LOCAL_RANK", "LOCAL_WORLD_SIZE", "LOCAL_SIZE", "MASTER_ADDR", "MASTER_PORT")


def child_env() -> dict[str, str]:
    """This environment without ``DIST_VARS`` and with the checkout importable: a child trainer must
    not inherit the parent's group (its MASTER_PORT is taken: the parent's store listens on it)."""
    env = {k: v for k, v in os.environ.items() if k not in DIST_VARS}
    env["PYTHONPATH"] = str(ROOT) + os.pathsep + env.get("PYTHONPATH", "")
    return env


def ensure_dist(settings: Settings):
    """One-process gloo group (DeepSpeed needs one even at world size 1); idempotent."""
    from magdi_dist.train.dist import init_distributed

    info = init_distributed()
    set_threads(settings.threads)  # init_distributed may have set its own default
    return info


def build_engine(module, cfg):
    from magdi_dist.train.engine import engine_config, initialize

    # A benchmark is its own driver: it builds the DeepSpeed config a resolved run would hold.
    # MAGDiStudent has a hidden size, a bare HF model a config; step_overhead's PlainLM neither (None:
    # DeepSpeed's own bucket sizes, the config it was always timed with).
    hidden = getattr(module, "hidden_size", None) or getattr(getattr(module, "config", None), "hidden_size", None)
    ds_config, optimizer = engine_config(cfg, 1, "cpu", hidden)
    engine, _ = initialize(module, cfg.train, 10**6, ds_config, optimizer)
    engine.train()
    return engine


# --- timing ---------------------------------------------------------------------------------------


def median(xs: list[float]) -> float:
    return float(statistics.median(xs)) if xs else float("nan")


class Clock:
    """Wall and process-CPU seconds of a block: ``with Clock() as c: ...; c.wall, c.cpu``."""

    def __enter__(self) -> Clock:
        self._w, self._c = time.perf_counter(), time.process_time()
        return self

    def __exit__(self, *exc) -> None:
        self.wall, self.cpu = time.perf_counter() - self._w, time.process_time() - self._c


def peak_flops(dtype: torch.dtype, n: int, repeats: int = 5) -> dict[str, float]:
    """Best-of-``repeats`` FLOP/s of an n x n matmul, on both clocks (train.metrics.measure_peak_flops's
    method; its own perf_counter value is recorded alongside in the result). Shared by the
    step-overhead figure (re-measured before each repetition) and the MFU figure (bf16 reference)."""
    import torch

    gen = torch.Generator().manual_seed(0)
    a, b = torch.randn(n, n, generator=gen).to(dtype), torch.randn(n, n, generator=gen).to(dtype)
    torch.matmul(a, b)
    best = {"wall": float("inf"), "cpu": float("inf")}
    for _ in range(repeats):
        with Clock() as c:
            torch.matmul(a, b)
        best = {"wall": min(best["wall"], c.wall), "cpu": min(best["cpu"], max(c.cpu, 1e-9))}
    return {k: 2.0 * n**3 / v for k, v in best.items()}


def interleaved(variants: dict[str, Callable[[], object]], reps: int, warmup: int = 1,
                before_rep: Callable[[], object] | None = None) -> dict[str, dict[str, list[float]]]:
    """{variant: {"wall": [...], "cpu": [...]}} seconds per call: ``warmup`` untimed calls each, then
    ``reps`` rounds in ABC..CBA alternating order (no variant always runs right after the same one).
    ``before_rep`` runs untimed at the start of each round (the MFU peak measurement)."""
    names = list(variants)
    for _ in range(warmup):
        for name in names:
            variants[name]()
    times: dict[str, dict[str, list[float]]] = {n: {"wall": [], "cpu": []} for n in names}
    for rep in range(reps):
        if before_rep is not None:
            before_rep()
        for name in names if rep % 2 == 0 else reversed(names):
            with Clock() as c:
                variants[name]()
            times[name]["wall"].append(c.wall)
            times[name]["cpu"].append(c.cpu)
    return times


def paired_ratio(times: dict, num: str, den: str, clock: str = "cpu") -> dict:
    """num/den. ``value`` (the figure): the median of the per-repetition ratios, each pair measured
    back to back under the same load, so a drift in load during the run cancels (it does drift: one
    quiet run's samples fell by a third as other jobs ended) and one disturbed sample cannot move
    it much. Also the ratio of the fastest samples and of the medians, and the spread."""
    a, b = times[num][clock], times[den][clock]
    ratios = [x / y for x, y in zip(a, b, strict=True)]
    return {"value": median(ratios), "min_ratio": min(a) / min(b), "median_ratio": median(a) / median(b),
            "paired_min": min(ratios), "paired_max": max(ratios), "n": len(ratios)}
