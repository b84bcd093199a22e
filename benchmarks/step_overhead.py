"""Figure 1, step overhead: a MAGDi training step / a plain causal-LM step on the same tokens.

Both are full DeepSpeed steps (engine forward, ``engine.backward``, ``engine.step``) with the same
ZeRO-2 preset, fp32, torch AdamW, in one process (world size 1: ZeRO-2 partitions nothing there, so
this is the compute cost; the ZeRO memory figure covers 2 ranks).

* MAGDi: ``MAGDiStudent`` (LM + GraphEncoder + scorer, NTP + margin + node losses), frozen and live
  graph features, on the collated batch (positives + negatives in one [2B, T] pass).
* Plain: the same LM architecture and initialisation alone, ``lm(input_ids, labels)`` (the Hugging
  Face loss over every real token), on the *same real tokens*: the positive rows and the real
  negative rows. The one-token placeholder rows collate adds for pairs without a negative are not
  tokens of the data, so a plain LM would not see them.
* ``legacy_*``: the student as it was before the benchmark-driven changes (benchmarks/legacy.py),
  measured in the same run so the before/after is a side-by-side ratio too (tiny-20m: frozen only,
  a step costs 3 s there).
* ``plain_aa``: a second, identical plain engine: plain_aa / plain should be 1.0, and how far it is
  from 1.0 is the noise floor of this run.

Model settings: tiny-1m as configs/tiny.yaml trains it (gcn_hidden 64), tiny-20m with the
StudentConfig defaults (the reference's GCN: hidden 512, 2 layers). The figure is the median of
per-repetition CPU-time ratios (benchmarks/common.py); wall-clock ratios are in ``ratio_wall``. The same
samples give the MFU figure (benchmarks/mfu.py): the tiny-20m frozen step is exactly its workload,
so it is timed once, with the matmul peak measured between repetitions.
"""

from __future__ import annotations

import torch
from torch import nn

from benchmarks.common import (
    Settings,
    build_engine,
    ensure_dist,
    hidden_of,
    interleaved,
    make_config,
    median,
    paired_ratio,
    peak_flops,
    sampled_batches,
    synthetic_rows,
    tokenizer,
)

GOAL = 1.10


class PlainLM(nn.Module):
    """A causal LM trained on its own: what the MAGDi step is compared against."""

    def __init__(self, lm: nn.Module):
        super().__init__()
        self.lm = lm

    def forward(self, batch: dict) -> dict:
        out = self.lm(input_ids=batch["input_ids"], attention_mask=batch["attention_mask"],
                      labels=batch["labels"], use_cache=False)
        return {"loss": out.loss}


def plain_batch(batch: dict) -> dict:
    """The rows of a MAGDi batch that carry data (positives + real negatives), labels on every token."""
    B = batch["input_ids"].shape[0] // 2
    keep = torch.cat([torch.ones(B, dtype=torch.bool), batch["pair_mask"] > 0])
    ids, mask = batch["input_ids"][keep], batch["attention_mask"][keep]
    width = int(mask.sum(dim=1).max())
    ids, mask = ids[:, :width].contiguous(), mask[:, :width].contiguous()
    return {"input_ids": ids, "attention_mask": mask, "labels": ids.masked_fill(mask == 0, -100)}


class Stepper:
    """One variant: ``batches`` through ``engine`` (forward, backward, step) per call. Also counts the
    training FLOPs and real tokens of a call (model/flops.py, as the training loop counts them)."""

    def __init__(self, engine, batches: list[dict], model: nn.Module):
        self.engine, self.batches, self.model = engine, batches, model
        self.flops = self.tokens = 0.0

    def __call__(self) -> None:
        from magdi_dist.model import flops_per_token, step_flops

        flops = tokens = 0.0
        for batch in self.batches:
            out = self.engine(batch)
            self.engine.backward(out["loss"])
            self.engine.step()
            if "num_tokens" in out:
                n = int(out["num_tokens"])
                flops += step_flops(self.model, n, int(out["num_nodes"]), batch["input_ids"].shape[1])
            else:  # plain LM: every attended position of its batch is a real token
                n = int(batch["attention_mask"].sum())
                flops += flops_per_token(self.model, batch["input_ids"].shape[1]) * n
            tokens += n
        self.flops, self.tokens = flops, tokens


_CACHE: dict[tuple, dict] = {}


def measure_preset(settings: Settings, base: str, with_legacy: bool = True) -> dict:
    """Time every variant of one preset (memoised per run: the MFU figure reads the tiny-20m one)."""
    key = (base, settings.quick, with_legacy, str(settings.workdir))
    if key not in _CACHE:
        _CACHE[key] = _measure(settings, base, with_legacy)
    return _CACHE[key]


def _measure(settings: Settings, base: str, with_legacy: bool) -> dict:
    from magdi_dist.data import collate
    from magdi_dist.model import MAGDiStudent, load_lm

    tok = tokenizer(settings)
    big = base == "tiny-20m"
    n_batches = 1 if settings.quick or big else 2  # 0.4-3 s of CPU work per sample
    reps = 1 if settings.quick else (6 if big else settings.reps)
    model = {} if big else {"gcn_hidden": 64}  # configs/tiny.yaml for tiny-1m
    probe = make_config(base, **model)
    rows = synthetic_rows(tok, hidden_of(base), n_mags=16 if settings.quick else 48)
    row_batches = sampled_batches(rows, probe.train.micro_batch_size, n_batches, representative=True)
    collated = [collate(rb, tok.pad_token_id) for rb in row_batches]

    variants: dict[str, Stepper] = {}
    for name in ("plain", "plain_aa"):
        lm = load_lm(probe.model.base, tokenizer=tok, seed=probe.model.seed)
        variants[name] = Stepper(build_engine(PlainLM(lm), probe), [plain_batch(b) for b in collated], lm)
    kinds = ["frozen", "live"] + (["legacy_frozen"] + ([] if big else ["legacy_live"]) if with_legacy else [])
    for name in kinds:
        mcfg = make_config(base, graph_features=name.removeprefix("legacy_"), **model)
        if name.startswith("legacy_"):
            from benchmarks.legacy import LegacyStudent, legacy_collate

            student = LegacyStudent(mcfg.model, tokenizer=tok)
            batches = [legacy_collate(rb, tok.pad_token_id) for rb in row_batches]
        else:
            student, batches = MAGDiStudent(mcfg.model, tokenizer=tok), collated
        variants[name] = Stepper(build_engine(student, mcfg), batches, student)

    # The fp32 matmul peak, re-measured before each repetition, for MFU (benchmarks/mfu.py).
    peaks: list[dict] = []
    times = interleaved(variants, reps=reps, warmup=1,
                        before_rep=lambda: peaks.append(peak_flops(torch.float32, 256 if settings.quick else 1024)))
    real_tokens = sum(int(plain_batch(b)["attention_mask"].sum()) for b in collated)
    result = {
        "preset": base,
        "gcn_hidden": probe.model.gcn_hidden,
        "batches_per_sample": n_batches,
        "micro_batch_pairs": probe.train.micro_batch_size,
        "real_tokens_per_sample": real_tokens,
        "magdi_padded_positions_per_sample": sum(int(b["input_ids"].numel()) for b in collated),
        "median_cpu_s": {k: median(v["cpu"]) for k, v in times.items()},
        "median_wall_s": {k: median(v["wall"]) for k, v in times.items()},
        "ratio": {k: paired_ratio(times, k, "plain") for k in variants if k != "plain"},
        "ratio_wall": {k: paired_ratio(times, k, "plain", "wall") for k in variants if k != "plain"},
        "samples_cpu_s": {k: v["cpu"] for k, v in times.items()},
        "samples_wall_s": {k: v["wall"] for k, v in times.items()},
        "flops_per_sample": {k: v.flops for k, v in variants.items()},
        "tokens_per_sample": {k: v.tokens for k, v in variants.items()},
        "peaks": peaks,
    }
    del variants
    return result


def run(settings: Settings, with_legacy: bool = True) -> dict:
    ensure_dist(settings)
    per_preset = [measure_preset(settings, base, with_legacy) for base in settings.presets]
    worst = max(r["ratio"][k]["value"] for r in per_preset for k in ("frozen", "live"))
    return {
        "figure": "step_overhead",
        "what": "MAGDi DeepSpeed step / plain causal-LM step on the same real tokens (ZeRO-2, 1 process, fp32; "
                "CPU-time ratio, wall-clock in ratio_wall)",
        "goal": f"<= {GOAL}",
        "value": worst,
        "met": worst <= GOAL,
        "presets": [{k: v for k, v in r.items() if k != "peaks"} for r in per_preset],
    }
