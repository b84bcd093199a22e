"""One padded LM pass or two (``model.lm_passes``), side by side on the real student.

    python -m benchmarks --only lm_passes [--set reps=1] [--threads 1] [--quick]

SmolLM2-135M-Instruct with the peer figure's LoRA, data and micro-batches (benchmarks/peers.py
``plan``: the same 15 timed batches), in one process, one intra-op thread. Per batch, forward and
backward of the MAGDi student (NTP + margin + node loss) with ``lm_passes: one`` and with ``split``,
and of the SFT student (margin 0, node 0: positives only) as the reference, in rotating order
(sft, one, split / split, one, sft, ...). No optimizer step: every variant sees the same weights, so
the three only differ in the rows and widths the LM runs. No DeepSpeed: at one rank ZeRO-3 gathers
nothing from other ranks, which is where the two choices differ beyond their padded positions
(model/student.py ``resolve_lm_passes``).

Figures: CPU time per variant, total over total across the batches, and the ratios split/one and
each over sft (the peer figure's (c)/(a) without the optimizer step and the loop); per-batch ratios'
median and range as the noise.
"""

from __future__ import annotations

import os
import time

from benchmarks.common import Settings, commit_id, median
from benchmarks.figure import Row, options

NAME = "lm_passes"
OPTIONS = {"reps": 1}  # passes over the peer figure's timed batches
ORDER = ("sft", "one", "split")


def run(settings: Settings) -> dict:
    import torch

    from benchmarks.peers import plan
    from magdi_dist.config import load_config
    from magdi_dist.data.shards import load_train_data
    from magdi_dist.model import MAGDiStudent
    from magdi_dist.train.loop import _collate

    spec = plan(settings, settings.workdir / ("lm_passes-quick" if settings.quick else "peers"))
    data = load_train_data(spec["manifest"])
    cfgs = {"sft": load_config(spec["config"], spec["overrides"] + spec["variants"]["sft"]),
            "one": load_config(spec["config"], spec["overrides"] + ["model.lm_passes=one"]),
            "split": load_config(spec["config"], spec["overrides"] + ["model.lm_passes=split"])}
    from transformers import AutoTokenizer

    tok = AutoTokenizer.from_pretrained(data.tokenizer)
    pad_id = spec["peer"]["pad_id"]  # as the training loop pads
    students = {"magdi": MAGDiStudent(cfgs["one"].model, tokenizer=tok, feature_dim=data.feature_dim).train()}
    students["sft"] = MAGDiStudent(cfgs["sft"].model, lm=students["magdi"].lm, feature_dim=data.feature_dim).train()
    reps = options(settings, OPTIONS)["reps"]
    batches = spec["batches"][spec["warmup"]:]
    cpu: dict[str, list[float]] = {k: [] for k in ORDER}
    k = 0
    for _ in range(reps):
        for idx in batches:
            rows = [data.train[i] for i in idx]
            order = ORDER if k % 2 == 0 else tuple(reversed(ORDER))
            k += 1
            for name in order:
                batch = _collate(cfgs[name], rows, pad_id, 0, torch.device("cpu"))  # with its LM pass plan
                student = students["sft" if name == "sft" else "magdi"]
                torch.manual_seed(0)  # the same LoRA dropout masks where the rows are the same
                c = time.process_time()
                student(batch)["loss"].backward()
                cpu[name].append(time.process_time() - c)
                student.zero_grad(set_to_none=True)

    def ratio(a: str, b: str) -> dict:
        rs = [x / y for x, y in zip(cpu[a], cpu[b], strict=True)]
        return {"value": sum(cpu[a]) / sum(cpu[b]), "paired_median": median(rs), "min": min(rs), "max": max(rs)}

    return {"figure": "lm_passes", "date": time.strftime("%Y-%m-%d %H:%M:%S %Z"),
            "commit": commit_id(),
            "what": f"{spec['student']} LoRA, the peer figure's {len(batches)} timed micro-batches x {reps}, forward + "
                    f"backward, {settings.threads} thread(s), CPU time",
            "cpu_s_total": {n: sum(v) for n, v in cpu.items()},
            "ratios": {"split_vs_one": ratio("split", "one"), "one_vs_sft": ratio("one", "sft"),
                       "split_vs_sft": ratio("split", "sft")},
            "samples_cpu_s": cpu, "loadavg": list(os.getloadavg())}


LABELS = {"split_vs_one": "two LM passes / one", "one_vs_sft": "one pass / SFT", "split_vs_sft": "two passes / SFT"}


def rows(result: dict) -> list[Row]:
    return [Row(f"lm_passes_{k}", f"LM passes, SmolLM2-135M LoRA forward + backward: {LABELS[k]}, CPU time (total "
                "over total)", r["value"]) for k, r in result["ratios"].items()]


def details(result: dict) -> str:
    st = "; ".join(f"{LABELS[k]} {r['value']:.3f}x (per batch: median {r['paired_median']:.3f}, range "
                   f"{r['min']:.2f}-{r['max']:.2f})" for k, r in result["ratios"].items())
    return f"- LM passes ({result['what']}; {result['date']}, commit {result['commit']}): {st}."
