"""Where the peer figure's difference comes from: the output head + NTP loss alone, forward and backward,
this project's way against TRL's, interleaved, CPU time, ``--threads`` threads (default 1):

    python -m benchmarks --only peer_head [--set rows=2 tokens=300 prompt=100 reps=7]

* ``project``: ``model/forward.py`` + ``model/losses.ntp_loss``: the head on every position of the
  positive rows, full [rows, T, V] logits, ``F.cross_entropy``;
* ``trl``: what ``SFTTrainer.compute_loss`` runs (TRL 1.16 ``add_fused_lm_head``): the chunked
  log-prob kernel with ``("log_probs", "entropy", "is_top1")`` (entropy and top-1 feed its logged
  metrics), on every position (off Triton devices it scores all positions, not only labelled ones),
  logits recomputed in the backward instead of kept;
* ``trl_logprob_only``: the same kernel asked for log-probs only (what its loss alone needs).

SmolLM2-135M's head shape (d 576, V 49,152), frozen (tied embedding under LoRA), random values (the
cost does not depend on them). Not in the default run: it explains one of its figures.
"""

from __future__ import annotations

import os
import time

from benchmarks.common import Settings, commit_id, median
from benchmarks.figure import BENCH_EXTRA, Row, options

NAME = "peer_head"
NEEDS = (BENCH_EXTRA,)
OPTIONS = {"rows": 2, "tokens": 300, "prompt": 100, "reps": 7}  # prompt: leading positions without a label
QUICK = {"tokens": 32, "prompt": 8, "reps": 1}


def run(settings: Settings) -> dict:
    import torch
    from trl.kernels import ChunkedLogProbFunction
    from trl.trainer.utils import _CHUNKED_LOGPROB_CHUNK_SIZE

    from magdi_dist.model.losses import ntp_loss

    load_start = list(os.getloadavg())
    gen = torch.Generator().manual_seed(0)
    o = options(settings, OPTIONS, QUICK)
    B, T, d, V = o["rows"], o["tokens"], 576, 49152
    weight = torch.randn(V, d, generator=gen) * 0.02
    labels = torch.randint(0, V, (B, T), generator=gen)
    labels[:, : o["prompt"]] = -100

    def project() -> None:
        h = torch.randn(B, T, d, requires_grad=True)
        ntp_loss(torch.nn.functional.linear(h, weight), labels)[0].backward()

    def chunked(outputs: tuple[str, ...]):
        def step() -> None:
            h = torch.randn(B, T, d, requires_grad=True)
            lab = labels[:, 1:]
            mask = lab != -100
            out = ChunkedLogProbFunction.apply(h[:, :-1].reshape(-1, d), weight, None, lab.clamp(min=0).reshape(-1),
                                               1.0, _CHUNKED_LOGPROB_CHUNK_SIZE, None, 1.0, outputs)
            (-out[0].view(mask.shape).masked_fill(~mask, 0).sum() / mask.sum()).backward()
        return step

    variants = {"project": project, "trl": chunked(("log_probs", "entropy", "is_top1")),
                "trl_logprob_only": chunked(("log_probs",))}
    for f in variants.values():
        f()
    cpu: dict[str, list[float]] = {k: [] for k in variants}
    for rep in range(o["reps"]):
        for name in variants if rep % 2 == 0 else reversed(list(variants)):
            t0 = time.process_time()
            variants[name]()
            cpu[name].append(time.process_time() - t0)
    # Stamped like the peer figure it explains: when, on what tree, under what load (CPU time, yet a loaded
    # machine's cache and memory contention still move it).
    return {"figure": NAME, "rows": B, "tokens": T, "prompt": o["prompt"], "reps": o["reps"],
            "threads": settings.threads, "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"), "commit": commit_id(),
            "loadavg_start": load_start, "loadavg_end": list(os.getloadavg()),
            "cpu_s": {k: median(v) for k, v in cpu.items()},
            "ratio_to_project": {k: median([a / b for a, b in zip(v, cpu["project"], strict=True)])
                                 for k, v in cpu.items()},
            "samples_cpu_s": cpu}


def rows(result: dict) -> list[Row]:
    return [Row(f"peer_head_{k}", f"Output head + NTP loss, forward + backward, SmolLM2-135M shape, {result['rows']} "
                f"rows x {result['tokens']} tokens: {k} / this project's, CPU time", v)
            for k, v in result["ratio_to_project"].items() if k != "project"]


def details(result: dict) -> str:
    st = "; ".join(f"{k} {result['cpu_s'][k] * 1e3:.0f} ms ({v:.2f}x)" for k, v in result["ratio_to_project"].items())
    when = ""
    if "commit" in result:  # results written before the stamp was recorded have none
        when = (f" Measured {result['date']}, commit "
                f"{result['commit'].replace('+dirty', ' + uncommitted changes')}, load average "
                f"{result['loadavg_start'][0]:.1f} at start / {result['loadavg_end'][0]:.1f} at end, "
                f"{result['reps']} interleaved repetitions, {result['prompt']} prompt positions per row.")
    return (f"- Peer head ({result['rows']} rows x {result['tokens']} tokens, median CPU time per call, the "
            f"ratio as the median of per-repetition ratios): {st}.{when}")
