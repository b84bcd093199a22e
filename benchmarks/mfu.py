"""Figure 2, MFU: achieved training FLOP/s of the largest demo student (tiny-20m) / this machine's
measured matmul peak, at the same thread count, plus tokens/s.

The training samples are the step-overhead figure's tiny-20m ones (benchmarks/step_overhead.py:
the frozen MAGDi step there is exactly this workload, so it is timed once); ``plain`` is the plain LM
for reference. "Before" in the summary is the MFU of results/before.json, the run taken before the
benchmark-driven changes.

Achieved FLOPs are counted as the training loop counts them (model/flops.py: 6 per trained weight
per token, 4 per frozen one, the output head only on the positive rows, attention over each row's
real length, the GCN per node), so padding and placeholder rows count as waste, not as work.

Same clock and peak as the MFU in metrics.jsonl (train/metrics.py): the step's wall-clock time over
``train.metrics.measure_peak_flops`` (best of 5 square fp32 matmuls, n=1024, wall clock, same thread
count), re-measured before every training repetition. MFU = the median over repetitions of that
repetition's FLOP/s / the peak measured just before it (paired, as in benchmarks/common.py); the
best repetition over the best peak is kept as ``mfu_best``, and the process-CPU-clock version
(``mfu_cpu``: CPU time over a CPU-clock peak) next to it: on a shared machine the wall clock also
counts other tenants' time slices, in the step and in the peak alike. bf16 peak is measured once in
the same run for reference (n=512: without AVX-512 BF16 / AMX the CPU emulates bf16 matmuls).
"""

from __future__ import annotations

import torch

from benchmarks.common import Settings, ensure_dist, median, peak_flops
from benchmarks.figure import Row
from benchmarks.step_overhead import measure_preset

NAME = "mfu"
GOAL = 0.35


def run(settings: Settings) -> dict:
    from magdi_dist.train.metrics import measure_peak_flops

    ensure_dist(settings)
    base = settings.largest
    n_peak = 256 if settings.quick else 1024
    bf16_peak = peak_flops(torch.bfloat16, n=128 if settings.quick else 512, repeats=2)
    trainer_peak = measure_peak_flops(torch.device("cpu"), torch.float32, n=n_peak)  # what train() would use
    r = measure_preset(settings, base)  # shared with the step-overhead figure
    peaks = r["peaks"]
    best_peak = max(p["wall"] for p in peaks)

    def mfu_of(name: str) -> dict:
        cpu, wall = r["samples_cpu_s"][name], r["samples_wall_s"][name]
        flops, tokens = r["flops_per_sample"][name], r["tokens_per_sample"][name]
        return {
            "mfu": median([flops / w / p["wall"] for w, p in zip(wall, peaks, strict=True)]),
            "mfu_best": flops / min(wall) / best_peak,
            "mfu_cpu": median([flops / c / p["cpu"] for c, p in zip(cpu, peaks, strict=True)]),
            "achieved_gflops": flops / median(wall) / 1e9,
            "tokens_per_s": tokens / median(wall),
            "tokens_per_cpu_s": tokens / median(cpu),
        }

    per_variant = {k: mfu_of(k) for k in ("frozen", "live", "plain") if k in r["flops_per_sample"]}
    after = per_variant["frozen"]
    return {
        "figure": "mfu",
        "what": f"{base} MAGDi training FLOP/s (frozen features, ZeRO-2, fp32, 1 process, "
                f"{r['micro_batch_pairs']} pairs per micro-batch) / train.metrics.measure_peak_flops, same thread "
                "count, wall clock (as metrics.jsonl)",
        "goal": f">= {GOAL:.0%}",
        "value": after["mfu"],
        "met": after["mfu"] >= GOAL,
        "preset": base,
        "micro_batch_pairs": r["micro_batch_pairs"],
        "tokens_per_s": after["tokens_per_s"],
        "mfu_cpu": after["mfu_cpu"],
        "tokens_per_cpu_s": after["tokens_per_cpu_s"],
        "peak_fp32_gflops": best_peak / 1e9,
        "peak_fp32_gflops_range": [min(p["wall"] for p in peaks) / 1e9, best_peak / 1e9],
        "peak_fp32_gflops_cpu": max(p["cpu"] for p in peaks) / 1e9,
        "peak_fp32_gflops_train_metrics": trainer_peak / 1e9,
        "peak_bf16_gflops": bf16_peak["cpu"] / 1e9,
        "variants": per_variant,
    }


def rows(result: dict) -> list[Row]:
    return [Row("mfu", f"MFU, {result['preset']} fp32 (model FLOPs / measure_peak_flops, wall clock as in "
                "metrics.jsonl)", result["value"], result["goal"], result["met"], "pct")]


def details(f: dict) -> str:
    per = "; ".join(f"{k}: MFU {d['mfu']:.1%} (best {d['mfu_best']:.1%}, CPU clock {d['mfu_cpu']:.1%}), "
                    f"{d['tokens_per_s']:.0f} tokens/s, {d['achieved_gflops']:.1f} GFLOP/s"
                    for k, d in f["variants"].items())
    return (f"- MFU {f['preset']} ({f['micro_batch_pairs']} pairs per micro-batch): peak fp32 "
            f"{f['peak_fp32_gflops']:.1f} GFLOP/s (measure_peak_flops, wall clock, best of the run; "
            f"{f['peak_fp32_gflops_cpu']:.1f} on the CPU clock), bf16 {f['peak_bf16_gflops']:.2f} GFLOP/s, "
            f"same thread count. {per}.")
